"""GUIDE for LlamaIndex: ``GuideLLM``, Influence as an instrumentation event, a local embedding model.

Install with ``pip install 'guide-attention[llama-index]'``.
"""

from __future__ import annotations

from guide_engine import MissingDependencyError

try:
    import llama_index.core  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        "guide_integrations.llama_index needs llama-index-core; install it with "
        "`pip install 'guide-attention[llama-index]'` (or `pip install 'llama-index-core>=0.14,<0.15'`)"
    ) from error

from .base import GuideLLM
from .embeddings import local_embedding, local_embedding_model
from .events import GUIDE_METADATA_KEY, InfluenceEvent, InfluenceEventHandler, ResponseAnnotator
from .templates import escape_template_value, escaped_template_args

__all__ = [
    "GUIDE_METADATA_KEY",
    "GuideLLM",
    "InfluenceEvent",
    "InfluenceEventHandler",
    "ResponseAnnotator",
    "escape_template_value",
    "escaped_template_args",
    "local_embedding",
    "local_embedding_model",
]
