"""Structured logs with structlog: one event per line, its fields as fields.

Modules log events, not sentences: ``_log.info("slot_acquired", slot=7, epoch=42)``. Entry
points call :func:`configure_logging` once; it renders every event — ours and those of the
libraries underneath (grpc, alembic), which log through the standard library — on stderr as

- ``key=value`` pairs (logfmt) by default: ``ts=… level=info service=… logger=…
  event=slot_acquired slot=7 epoch=42 trace_id=… span_id=…``;
- one JSON object per line with ``LOG_FORMAT=json`` (``--log-format json``), for log
  shippers.

``trace_id`` and ``span_id`` are added as fields whenever a span is current. Tests assert on
events with ``structlog.testing.capture_logs()``, never on rendered text.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from opentelemetry import trace

from registry import LOG_FORMATS

_HANDLER_MARK = "_sessionmesh_handler"
_KEY_ORDER = ("ts", "level", "service", "logger", "event")

EventDict = MutableMapping[str, Any]


def add_trace_ids(_logger: object, _method: str, event: EventDict) -> EventDict:
    """Add ``trace_id`` and ``span_id`` of the current span, if one is valid."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event["trace_id"] = trace.format_trace_id(span_context.trace_id)
        event["span_id"] = trace.format_span_id(span_context.span_id)
    return event


def _errors_as_repr(_logger: object, _method: str, event: EventDict) -> EventDict:
    # str() of many exceptions is empty (TimeoutError()); the repr names the type.
    for key, value in event.items():
        if isinstance(value, BaseException):
            event[key] = repr(value)
    return event


class _AddService:
    def __init__(self, service_name: str) -> None:
        self._service_name = service_name

    def __call__(self, _logger: object, _method: str, event: EventDict) -> EventDict:
        event.setdefault("service", self._service_name)
        return event


def _shared_processors(service_name: str) -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        structlog.stdlib.add_log_level,
        _AddService(service_name),
        structlog.stdlib.add_logger_name,
        add_trace_ids,
    ]


def _renderer(log_format: str) -> Any:
    if log_format == "json":
        return structlog.processors.JSONRenderer(sort_keys=False, default=repr)
    return structlog.processors.LogfmtRenderer(key_order=list(_KEY_ORDER), bool_as_flag=False)


def configure_logging(
    service_name: str,
    *,
    level: str = "INFO",
    log_format: str = "text",
    cache_loggers: bool = True,
) -> None:
    """Render every log event of the process on stderr, one line each (see the module
    docstring); idempotent. ``cache_loggers=False`` keeps loggers unbound, so that
    ``structlog.testing.capture_logs`` sees every one of them (tests)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: use one of {', '.join(LOG_FORMATS)}")
    shared = _shared_processors(service_name)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=cache_loggers,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _errors_as_repr,
            _renderer(log_format),
        ],
    )
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in root.handlers:
        if getattr(handler, _HANDLER_MARK, False):
            handler.setFormatter(formatter)
            return
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(formatter)
    root.addHandler(handler)
