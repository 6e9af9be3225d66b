"""Shared fixtures: tiny random models of several families, the embedded model, a reference attention."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

import guide_engine  # noqa: F401  (registers "guide")
from tests.reference import FAMILIES, tiny_model


@pytest.fixture(scope="session")
def real_engine():
    """The embedded SmolLM2-135M-Instruct, loaded once per test session."""
    return guide_engine.shared_engine()


@pytest.fixture(scope="session")
def smol_tokenizer(tmp_path_factory):
    """SmolLM2's tokenizer (with its chat template), for tiny models built on its vocabulary."""
    from transformers import AutoTokenizer

    from guide_engine.loading import embedded_model_location

    folder, gguf = embedded_model_location()
    saved = tmp_path_factory.mktemp("tokenizer")
    AutoTokenizer.from_pretrained(folder, gguf_file=gguf).save_pretrained(saved)
    return AutoTokenizer.from_pretrained(saved)


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return request.param


@pytest.fixture
def tiny(family):
    """A tiny random model of one family, with ``"guide"`` attention, in float32 eval mode."""
    torch.manual_seed(0)
    return tiny_model(family)
