"""GUIDE served through vLLM: a general plugin that adds a model class and a chat renderer.

``register()`` is vLLM's ``vllm.general_plugins`` entry point (run in every vLLM process). It adds

* the model architecture ``GuideLlamaForCausalLM`` (:mod:`.model`), selected with
  ``--hf-overrides '{"architectures": ["GuideLlamaForCausalLM"]}'``;
* the tokenizer/renderer mode ``guide`` (:mod:`.renderer`), selected with ``--tokenizer-mode guide``.

Only vLLM's public extension points are used. ``guide serve`` (:mod:`.serve`) sets all of this up.
Importing this package does not import vLLM; :func:`register` does.
"""

from __future__ import annotations

__all__ = ["ARCHITECTURES", "RENDERER_MODE", "register"]

ARCHITECTURES = {"LlamaForCausalLM": "GuideLlamaForCausalLM"}
"""Stock architecture → its GUIDE class (Llama family only, for now)."""
RENDERER_MODE = "guide"


def register() -> None:
    """Register GUIDE's model class, tokenizer mode and renderer mode with vLLM (idempotent)."""
    from vllm import ModelRegistry
    from vllm.renderers.registry import RENDERER_REGISTRY
    from vllm.tokenizers.registry import TokenizerRegistry

    if "GuideLlamaForCausalLM" not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model("GuideLlamaForCausalLM", "guide_integrations.vllm.model:GuideLlamaForCausalLM")
    if RENDERER_MODE not in TokenizerRegistry.tokenizers:
        TokenizerRegistry.register(RENDERER_MODE, *TokenizerRegistry.tokenizers["hf"])
    if RENDERER_MODE not in RENDERER_REGISTRY.renderers:
        RENDERER_REGISTRY.register(RENDERER_MODE, "guide_integrations.vllm.renderer", "GuideRenderer")
