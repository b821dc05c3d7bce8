"""Tracing, metrics and logging set-up shared by every process (entry points configure the SDK)."""
