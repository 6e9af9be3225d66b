"""``GuideBodyMiddleware``: GUIDE's request options at the top level of a chat request body.

OpenAI clients send extra fields with ``extra_body={"delta_mid": 1}``; vLLM would ignore unknown
top-level fields. This ASGI middleware (``--middleware guide_integrations.vllm.middleware.GuideBodyMiddleware``)
moves ``delta_mid`` and ``delta_influence`` into ``chat_template_kwargs``, where the renderer reads
them (``delta_influence`` is the Δ of ``<?->`` spans, as in ``GuideEngine.generate`` without
``metric``: the server applies it and measures nothing), and refuses with HTTP 400 what GUIDE
cannot serve:

* a non-finite ``delta_mid``;
* the engine's steering and measuring options (``contrast``, ``contrast_reference``,
  ``delta_queries``, ``layers``, ``heads``, ``metric``): the server does not apply them, and vLLM
  would drop them silently;
* tags together with repetition, frequency or presence penalties or ``prompt_logprobs``: those read
  the prompt's token ids against the vocabulary, and GUIDE's ids carry Δ above it.
"""

from __future__ import annotations

import json
from typing import Any

from guide_engine.errors import GuideError, GuideValueError, require_finite
from guide_engine.tags import MARKERS

__all__ = ["GuideBodyMiddleware", "rewrite_body"]

GUIDE_FIELDS = ("delta_mid", "delta_influence")
ENGINE_ONLY = ("contrast", "contrast_reference", "delta_queries", "layers", "heads", "metric")
"""``GuideEngine`` options the server does not apply: refused rather than ignored."""
_NEUTRAL = {"repetition_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0, "prompt_logprobs": None}


def _has_tags(body: dict[str, Any]) -> bool:
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        parts = content if isinstance(content, list) else [content]
        for part in parts:
            text = part.get("text") if isinstance(part, dict) else part
            if isinstance(text, str) and any(marker in text for marker in MARKERS):
                return True
    return False


def rewrite_body(body: dict[str, Any]) -> dict[str, Any]:
    """The chat request with GUIDE's fields moved into ``chat_template_kwargs``.

    Raises:
        GuideValueError: A GUIDE field is not a finite number, or tags meet a prompt-reading option.
    """
    refused = [name for name in ENGINE_ONLY if name in body or name in (body.get("chat_template_kwargs") or {})]
    if refused:
        raise GuideValueError(
            f"{refused[0]} is an option of GuideEngine (ChatGuide, GuideLLM) that the vLLM server does not apply; "
            f"the server takes {GUIDE_FIELDS}: drop {refused[0]!r} or run the request through the engine"
        )
    moved = {name: require_finite(name, body.pop(name)) for name in GUIDE_FIELDS if name in body}
    kwargs = dict(body.get("chat_template_kwargs") or {})
    for name in GUIDE_FIELDS:
        if name in kwargs:
            moved.setdefault(name, require_finite(f"chat_template_kwargs.{name}", kwargs[name]))
    if moved:
        body["chat_template_kwargs"] = {**kwargs, **moved}
    if _has_tags(body):
        for name, neutral in _NEUTRAL.items():
            if body.get(name, neutral) not in (neutral, None):
                raise GuideValueError(
                    f"{name}={body[name]!r} reads the prompt's token ids and cannot be combined with GUIDE tags; "
                    f"leave it at {neutral!r} or send the prompt without tags"
                )
    return body


class GuideBodyMiddleware:
    """ASGI middleware for ``POST …/chat/completions``: see the module docstring."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        chat = scope.get("type") == "http" and scope.get("method") == "POST"
        if not chat or not scope["path"].endswith("/chat/completions"):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending its body
                await self.app(scope, _replay([message]), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        try:
            body = json.loads(raw)
            if isinstance(body, dict):
                raw = json.dumps(rewrite_body(body)).encode()
        except GuideError as error:
            await _bad_request(send, str(error))
            return
        except ValueError:
            pass  # not JSON: vLLM answers that itself
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(raw)).encode()))
        replay = [{"type": "http.request", "body": raw, "more_body": False}]
        await self.app({**scope, "headers": headers}, _replay(replay, receive), send)


def _replay(messages: list[dict[str, Any]], then: Any = None) -> Any:
    """An ASGI ``receive`` that returns ``messages`` first, then defers to ``then`` (disconnects)."""
    pending = list(messages)

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


async def _bad_request(send: Any, message: str) -> None:
    payload = json.dumps(
        {"error": {"message": message, "type": "BadRequestError", "param": "messages", "code": 400}}
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
