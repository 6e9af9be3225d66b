"""GUIDE: emphasize parts of a prompt with tags, and measure how much a part steers the model.

Importing the package registers the ``"guide"`` attention implementation with transformers'
``AttentionInterface`` (and its mask builder) and the ``"pay-attention"`` pipeline task.
"""

from .alignment import AppliedSpan, EncodedPrompt
from .attention import register as _register_attention
from .engine import GenerationResult, GenerationStream, GuideEngine
from .errors import ContextLengthError, GuideError, MissingDependencyError, ModelNotSupportedError, TagError
from .influence import InfluenceResult
from .registry import shared_engine
from .pipeline import PayAttentionPipeline, register_pipeline as _register_pipeline
from .tags import ParsedText, Span, escape_tags, parse_tags, strip_tags

_register_attention()
_register_pipeline()

__all__ = [
    "AppliedSpan",
    "ContextLengthError",
    "EncodedPrompt",
    "GenerationResult",
    "GenerationStream",
    "GuideEngine",
    "GuideError",
    "InfluenceResult",
    "MissingDependencyError",
    "ModelNotSupportedError",
    "ParsedText",
    "PayAttentionPipeline",
    "Span",
    "TagError",
    "escape_tags",
    "parse_tags",
    "shared_engine",
    "strip_tags",
]
