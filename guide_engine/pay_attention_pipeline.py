"""The seed's interface: ``pipeline("pay-attention", model=...)``.

A :class:`~transformers.TextGenerationPipeline` whose tagged prompts go through
:class:`GuideEngine`. As in the seed package, a tagged string is sent as a user message through
the chat template, an untagged one is handled exactly as the ``text-generation`` pipeline does,
and each record gains ``tokens`` (the prompt ids) and, with ``metric=``, ``influence``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, TextGenerationPipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.text_generation import Chat

from .alignment import Prompt
from .engine import GuideEngine
from .errors import GuideValueError
from .options import check_metric
from .tags import parse_tags

__all__ = ["TASK", "PayAttentionPipeline", "register_pipeline"]

TASK = "pay-attention"


def _has_tags(prompt: Any) -> bool:
    if isinstance(prompt, Chat):
        return any(parse_tags(m["content"]).spans for m in prompt.messages if isinstance(m.get("content"), str))
    return isinstance(prompt, str) and bool(parse_tags(prompt).spans)


class PayAttentionPipeline(TextGenerationPipeline):
    """Text generation with GUIDE tags and, optionally, Influence of a ``<?->`` span.

    Args:
        delta_mid: Δ of level-2 emphasis (level 1 gets half, level 3 double).
        layers: ``"all"`` or the layers that get the bias.
        *args: as for ``TextGenerationPipeline``.
        **kwargs: as for ``TextGenerationPipeline``.
    """

    def __init__(self, *args: Any, delta_mid: float = 1.0, layers: Any = "all", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.engine = GuideEngine(self.model, self.tokenizer, delta_mid=delta_mid, layers=layers)

    # The pipeline hooks below take their own keywords, as transformers' pipelines do (the base
    # class passes **kwargs), hence the ``type: ignore[override]`` on each.

    def _sanitize_parameters(  # type: ignore[override]
        self,
        metric: str | None = None,
        delta_influence: float = 0.0,
        delta_mid: float | None = None,
        layers: Any = None,
        heads: Any = None,
        **kwargs: Any,
    ):
        check_metric(metric)
        preprocess, forward, postprocess = super()._sanitize_parameters(**kwargs)
        guide = {
            "metric": metric,
            "delta_influence": delta_influence,
            "delta_mid": delta_mid,
            "layers": layers,
            "heads": heads,
        }
        preprocess["guide_options"] = guide
        forward["guide_options"] = guide
        return preprocess, forward, postprocess

    def preprocess(  # type: ignore[override]
        self, prompt_text: Any, guide_options: dict[str, Any] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        if not _has_tags(prompt_text):
            return super().preprocess(prompt_text, **kwargs)
        options = guide_options or {}
        prompt: Prompt = list(prompt_text.messages) if isinstance(prompt_text, Chat) else prompt_text
        encoded = self.engine.encode(
            prompt, delta_mid=options.get("delta_mid"), delta_influence=options.get("delta_influence", 0.0)
        )
        ids = torch.tensor([encoded.input_ids])
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "prompt_text": prompt_text,
            "guide_prompt": prompt,
        }

    def _forward(  # type: ignore[override]
        self, model_inputs: dict[str, Any], guide_options: dict[str, Any] | None = None, **generate_kwargs: Any
    ) -> dict[str, Any]:
        prompt = model_inputs.pop("guide_prompt", None)
        options = {k: v for k, v in (guide_options or {}).items() if v is not None}
        if prompt is None:  # no tags: exactly the text-generation pipeline
            if options.get("metric") is not None:
                raise GuideValueError(
                    f"metric={options['metric']!r} needs an influence span: wrap the text to measure in <?-> … <-?>"
                )
            return super()._forward(model_inputs, **generate_kwargs)
        result = self.engine.generate(prompt, **options, **self._sampling_options(generate_kwargs))
        # The pipeline's postprocess cuts the prompt off the sequence, as for stock generation.
        generated = torch.tensor([model_inputs["input_ids"][0].tolist() + result.token_ids])
        outputs = {
            "generated_sequence": generated[None],
            "input_ids": model_inputs["input_ids"],
            "prompt_text": model_inputs["prompt_text"],
        }
        if result.influence is not None:
            outputs["guide_influence"] = result.influence
        return outputs

    def postprocess(self, model_outputs: dict[str, Any], **kwargs: Any) -> list[dict[str, Any]]:  # type: ignore[override]
        influence = model_outputs.pop("guide_influence", None)
        records = super().postprocess(model_outputs, **kwargs)
        for record in records:
            record["tokens"] = model_outputs["input_ids"]
            if influence is not None:
                record["influence"] = influence
        return records

    def _sampling_options(self, generate_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The engine options of a tagged prompt's ``generate`` keywords; one it cannot honour raises.

        Read from the keywords, else the model's ``generation_config``, as ``generate`` reads them:
        ``max_new_tokens``, ``do_sample`` (with ``temperature``, ``top_p``, ``top_k``),
        ``repetition_penalty`` and ``stop_strings``.
        """
        unsupported = sorted(
            name
            for name, value in generate_kwargs.items()
            if name not in _ENGINE_GENERATE_KEYWORDS and _DEFAULT_GENERATE_VALUES.get(name, object()) != value
        )
        if unsupported:
            raise GuideValueError(
                f"a tagged prompt decodes in the GUIDE engine, which does not take {', '.join(unsupported)}; "
                f"it takes {', '.join(sorted(_ENGINE_GENERATE_KEYWORDS - {'generation_config'}))} "
                "(an untagged prompt runs transformers' own generate, with every keyword)"
            )
        config = generate_kwargs.get("generation_config", self.model.generation_config)

        def read(name: str, default: Any) -> Any:
            value = generate_kwargs.get(name, getattr(config, name, None))
            return default if value is None else value

        max_new = read("max_new_tokens", None) or self.engine.max_new_tokens
        options: dict[str, Any] = {"max_new_tokens": int(max_new)}
        if read("do_sample", False):
            options["temperature"] = float(read("temperature", 1.0) or 1.0)
            options["top_p"] = float(read("top_p", 1.0) or 1.0)
            if int(read("top_k", 0)) > 0:
                options["top_k"] = int(read("top_k", 0))
        if float(read("repetition_penalty", 1.0)) != 1.0:
            options["repetition_penalty"] = float(read("repetition_penalty", 1.0))
        stop = generate_kwargs.get("stop_strings")
        if stop:
            options["stop"] = stop
        return options


_ENGINE_GENERATE_KEYWORDS = frozenset(
    {
        "max_new_tokens",
        "do_sample",
        "temperature",
        "top_p",
        "top_k",
        "repetition_penalty",
        "stop_strings",
        "generation_config",
        "pad_token_id",  # set by the pipeline for padding; one row has none
        "eos_token_id",
        "tokenizer",
    }
)
"""``generate`` keywords a tagged prompt honours (or that do not change one row's greedy text)."""

_DEFAULT_GENERATE_VALUES: dict[str, Any] = {"num_beams": 1, "num_return_sequences": 1}
"""Keywords the engine lacks, accepted at their default value."""


def register_pipeline() -> None:
    """Register the ``"pay-attention"`` task with transformers (idempotent)."""
    if TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=PayAttentionPipeline, pt_model=AutoModelForCausalLM)
