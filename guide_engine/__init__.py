"""GUIDE: emphasize parts of a prompt with tags, and measure how much a part steers the model.

Importing the package registers the ``"guide"`` attention implementation with transformers'
``AttentionInterface`` (and its mask builder) and the ``"pay-attention"`` pipeline task, once.

Modules, each importing only those listed before it: ``errors`` → ``tags`` → ``alignment`` →
``tools`` → ``options`` → ``constraints`` → ``plots`` → ``attention`` → ``influence`` →
``kv_cache`` → ``decoding`` → ``loading`` → ``engine`` → ``registry`` → ``pay_attention_pipeline`` → ``cli`` (checked by
``tests/test_architecture.py``).
"""

from .alignment import AppliedSpan, EncodedPrompt
from .attention import register as _register_attention
from .engine import GenerationResult, GenerationStream, GuideEngine
from .errors import (
    ContextLengthError,
    GenerationTimeoutError,
    GuideError,
    GuideValueError,
    InfluenceError,
    MissingDependencyError,
    ModelLoadError,
    ModelNotSupportedError,
    TagError,
)
from .influence import InfluenceResult
from .options import REQUEST_OPTIONS
from .pay_attention_pipeline import PayAttentionPipeline
from .pay_attention_pipeline import register_pipeline as _register_pipeline
from .registry import shared_engine
from .tags import ParsedText, Span, escape_tags, parse_tags, strip_tags
from .tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, ToolCall

_register_attention()
_register_pipeline()

__all__ = [
    "REQUEST_OPTIONS",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "AppliedSpan",
    "ContextLengthError",
    "EncodedPrompt",
    "GenerationResult",
    "GenerationStream",
    "GenerationTimeoutError",
    "GuideEngine",
    "GuideError",
    "GuideValueError",
    "InfluenceError",
    "InfluenceResult",
    "MissingDependencyError",
    "ModelLoadError",
    "ModelNotSupportedError",
    "ParsedText",
    "PayAttentionPipeline",
    "Span",
    "TagError",
    "ToolCall",
    "escape_tags",
    "parse_tags",
    "shared_engine",
    "strip_tags",
]
