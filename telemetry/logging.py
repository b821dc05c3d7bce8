"""Structured logs: one line per event, with the trace and span ids when there are any.

CONTRACT (filled in by the gateway/telemetry work; signatures are fixed, node uses them).
"""

from __future__ import annotations


def configure_logging(service_name: str, *, level: str = "INFO") -> None:
    """Route the root logger to stderr as one ``key=value`` line per event, with
    ``service``, ``trace_id`` and ``span_id`` fields. Idempotent."""
    raise NotImplementedError
