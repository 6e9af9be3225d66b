"""GUIDE served through vLLM: a general plugin that adds a model class and a chat renderer.

``register()`` is vLLM's ``vllm.general_plugins`` entry point (run in every vLLM process). It adds

* a GUIDE model class per supported family (:mod:`.model`: Llama, Mistral, Qwen2, Qwen3, Gemma 3),
  selected with ``--hf-overrides '{"architectures": ["GuideLlamaForCausalLM"]}'`` (or the family's);
* the tokenizer/renderer mode ``guide`` (:mod:`.renderer`), selected with ``--tokenizer-mode guide``.

Only vLLM's public extension points are used. ``guide serve`` (:mod:`.serve`) sets all of this up.
Importing this package does not import vLLM; :func:`register` does.
"""

from __future__ import annotations

__all__ = ["ARCHITECTURES", "RENDERER_MODE", "register"]

ARCHITECTURES = {
    name: "Guide" + name
    for name in (
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "Gemma3ForCausalLM",
    )
}
"""Stock architecture (a model's ``config.json``) → its GUIDE class in :mod:`.model`."""
RENDERER_MODE = "guide"
"""The tokenizer and renderer mode (``--tokenizer-mode guide``) under which :mod:`.renderer` is registered."""


def register() -> None:
    """Register GUIDE's model class, tokenizer mode and renderer mode with vLLM (idempotent)."""
    from vllm import ModelRegistry
    from vllm.renderers.registry import RENDERER_REGISTRY
    from vllm.tokenizers.registry import TokenizerRegistry

    supported = ModelRegistry.get_supported_archs()
    for guide_class in ARCHITECTURES.values():
        if guide_class not in supported:
            ModelRegistry.register_model(guide_class, f"guide_integrations.vllm.model:{guide_class}")
    if RENDERER_MODE not in TokenizerRegistry.tokenizers:
        TokenizerRegistry.register(RENDERER_MODE, *TokenizerRegistry.tokenizers["hf"])
    if RENDERER_MODE not in RENDERER_REGISTRY.renderers:
        RENDERER_REGISTRY.register(RENDERER_MODE, "guide_integrations.vllm.renderer", "GuideRenderer")
