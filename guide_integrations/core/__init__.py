"""What the LangChain and LlamaIndex wrappers share, once, one module per job.

Both wrappers translate their framework's calls into the same :class:`~guide_engine.GuideEngine`
calls and its results back. Everything that does not depend on the framework lives here:

- :mod:`.settings`: :func:`check_engine_setting` (the one range check of a wrapper's settings, the
  engine's own) and :func:`checked_field` (its field validator), :class:`SettingsError` (a bad
  setting in the engine's words), :func:`json_schema_format` (a JSON schema as the engine's
  ``response_format``), :func:`unknown_options`;
- :mod:`.prompts`: :func:`escape_untrusted_value` (the one walker that makes untrusted values
  literal), :func:`check_message_tags` and :func:`has_influence_span` (tags parsed as the engine will);
- :mod:`.results`: :func:`model_display_name`, :func:`token_usage`, :func:`stream_result`,
  :func:`agenerate` and :func:`astream_pieces` (a stream stepped from asyncio, cancellable);
- :mod:`.packages`: :func:`installed_package_folder` (model files shipped as Python packages).

Nothing here imports LangChain or LlamaIndex.
"""

from __future__ import annotations

from .packages import installed_package_folder
from .prompts import check_message_tags, escape_untrusted_value, has_influence_span
from .results import agenerate, astream_pieces, model_display_name, stream_result, token_usage
from .settings import SettingsError, check_engine_setting, checked_field, json_schema_format, unknown_options

__all__ = [
    "SettingsError",
    "agenerate",
    "astream_pieces",
    "check_engine_setting",
    "checked_field",
    "check_message_tags",
    "escape_untrusted_value",
    "has_influence_span",
    "installed_package_folder",
    "json_schema_format",
    "model_display_name",
    "stream_result",
    "token_usage",
    "unknown_options",
]
