"""Structured logs: one line per event, with the trace and span ids when there are any."""

from __future__ import annotations

import logging
import sys
import time

from opentelemetry import trace

_HANDLER_MARK = "_sessionmesh_handler"


def _quoted(text: str) -> str:
    # One event per line: newlines and quotes inside the message are escaped.
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class KeyValueFormatter(logging.Formatter):
    """``ts=… level=… service=… logger=… msg="…" trace_id=… span_id=…`` on one line."""

    def __init__(self, service_name: str) -> None:
        super().__init__()
        self._service_name = service_name

    def format(self, record: logging.LogRecord) -> str:
        """The record as one ``key=value`` line (trace ids only inside a valid span)."""
        timestamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = [
            f"ts={timestamp}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"service={self._service_name}",
            f"logger={record.name}",
            f"msg={_quoted(record.getMessage())}",
        ]
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            fields.append(f"trace_id={trace.format_trace_id(span_context.trace_id)}")
            fields.append(f"span_id={trace.format_span_id(span_context.span_id)}")
        if record.exc_info:
            fields.append(f"error={_quoted(self.formatException(record.exc_info))}")
        return " ".join(fields)


def configure_logging(service_name: str, *, level: str = "INFO") -> None:
    """Route the root logger to stderr as one ``key=value`` line per event, with
    ``service``, ``trace_id`` and ``span_id`` fields. Idempotent."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in root.handlers:
        if getattr(handler, _HANDLER_MARK, False):
            handler.setFormatter(KeyValueFormatter(service_name))
            return
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(KeyValueFormatter(service_name))
    root.addHandler(handler)
