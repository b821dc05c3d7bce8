"""How the benchmark's meshes trace: on, sampled, as a deployment would run them."""

from __future__ import annotations

TRACED_ENVIRONMENT = (
    ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
    ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
)
"""Tracing on: every root sampled at 10 %, children follow their parent."""
UNTRACED_ENVIRONMENT = (("OTEL_SDK_DISABLED", "true"),)
"""The OpenTelemetry SDK off: what the scenarios compare the cost of tracing with."""
