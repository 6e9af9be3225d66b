"""``GuideRenderer``: vLLM's chat renderer that reads GUIDE tags and writes Δ into the token ids.

For a chat request vLLM's renderer turns messages into prompt token ids. This one removes the tags
from every message first (so the model gets exactly the untagged prompt's tokens), renders the
untagged conversation the stock way, computes each token's Δ with the engine's own alignment
(:func:`guide_engine.alignment.encode_prompt`), and shifts the ids of the emphasized tokens
(:mod:`guide_integrations.vllm.codec`).

``delta_mid`` (and ``delta_influence``) come per request in ``chat_template_kwargs``; the server's
middleware also accepts them at the top level of the body. Malformed tags raise a
``VLLMValidationError`` carrying the :class:`~guide_engine.errors.TagError` message, which vLLM
answers with HTTP 400.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from vllm.exceptions import VLLMValidationError
from vllm.renderers.hf import HfRenderer

from guide_engine.alignment import encode_prompt
from guide_engine.errors import GuideError
from guide_engine.tags import parse_tags

from .codec import encode_ids

__all__ = ["GuideRenderer", "DEFAULT_DELTA_MID"]

DEFAULT_DELTA_MID = 1.0
GUIDE_KWARGS = ("delta_mid", "delta_influence")


def _text_content(content: Any) -> Any:
    """A message's text: a string as is, a list of text parts joined (as vLLM's "string" format does)."""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(p.get("text", "") for p in content)
    return content


class GuideRenderer(HfRenderer):
    """An ``HfRenderer`` that applies GUIDE tags; select it with ``--tokenizer-mode guide``."""

    def _split(self, messages: Sequence[Any], params: Any) -> tuple[list[Any], list[Any], Any, dict[str, float]]:
        """Messages with tags (for alignment) and without (for vLLM), params without GUIDE kwargs."""
        kwargs = dict(params.chat_template_kwargs or {})
        options = {name: kwargs.pop(name) for name in GUIDE_KWARGS if name in kwargs}
        params = dataclasses.replace(params, chat_template_kwargs=kwargs)
        tagged, clean = [], []
        try:
            for message in messages:
                content = _text_content(message.get("content"))
                if isinstance(content, str):
                    tagged.append({**message, "content": content})
                    clean.append({**message, "content": parse_tags(content).text})
                else:  # images, audio, tool calls without text: no tags to read
                    tagged.append(message)
                    clean.append(message)
        except GuideError as error:
            raise VLLMValidationError(str(error), parameter="messages") from error
        return tagged, clean, params, options

    def _apply(self, tagged: list[Any], clean: list[Any], options: dict[str, float], prompt: Any) -> Any:
        """Shift the prompt's ids by each token's Δ; the prompt is unchanged when nothing is tagged."""
        if tagged == clean or not isinstance(prompt, dict):
            return prompt
        try:
            encoded = encode_prompt(
                [{"role": m["role"], "content": m["content"]} for m in tagged],
                self.get_tokenizer(),
                delta_mid=options.get("delta_mid", DEFAULT_DELTA_MID),
                delta_influence=options.get("delta_influence", 0.0),
            )
        except GuideError as error:
            raise VLLMValidationError(str(error), parameter="messages") from error
        if "prompt_token_ids" in prompt:  # the template was tokenized: the ids must be ours
            same = encoded.input_ids == list(prompt["prompt_token_ids"])
        else:  # a text prompt, tokenized later: tokenize it here, the engine's way
            same = encoded.text == prompt.get("prompt")
        if not same:
            raise VLLMValidationError(
                "tags need the model's own chat template with add_generation_prompt, and no tools; this request "
                "renders differently, so its tags cannot be placed",
                parameter="messages",
            )
        if encoded.has_bias:
            prompt = {key: value for key, value in prompt.items() if key != "prompt"}
            prompt["prompt_token_ids"] = encode_ids(
                encoded.input_ids, encoded.token_deltas, self.model_config.get_vocab_size()
            )
        return prompt

    def render_messages(self, messages: Any, params: Any) -> Any:
        tagged, clean, params, options = self._split(messages, params)
        conversation, prompt = super().render_messages(clean, params)
        return conversation, self._apply(tagged, clean, options, prompt)

    async def render_messages_async(self, messages: Any, params: Any) -> Any:
        tagged, clean, params, options = self._split(messages, params)
        conversation, prompt = await super().render_messages_async(clean, params)
        return conversation, self._apply(tagged, clean, options, prompt)

    def validate_token_ids(self, token_ids: Sequence[int], *, parameter: str | None = None) -> None:
        vocab = self.model_config.get_vocab_size()
        super().validate_token_ids([t % vocab for t in token_ids], parameter=parameter)
