"""Reading a process's configuration: flags win over environment variables, which win over
defaults; a bad value ends the process with a message naming it and exit code 2 (argparse's
convention). The node, the gateway and simnet all read theirs this way."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from registry.errors import InvalidInput

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
"""What ``--log-level`` / ``LOG_LEVEL`` accept."""
LOG_FORMATS = ("text", "json")
"""What ``--log-format`` / ``LOG_FORMAT`` accept."""

_Config = TypeVar("_Config")


def parse_flags(
    build_parser: Callable[[Mapping[str, str]], argparse.ArgumentParser],
    build_config: Callable[[argparse.Namespace], _Config],
    argv: Sequence[str] | None,
    environ: Mapping[str, str] | None,
) -> _Config:
    """The config ``build_config`` makes of the flags ``argv`` (default ``sys.argv[1:]``),
    parsed by the parser ``build_parser`` makes with ``environ`` (default ``os.environ``) as
    its defaults; an ``InvalidInput`` from ``build_config`` exits with code 2."""
    parser = build_parser(os.environ if environ is None else environ)
    args = parser.parse_args(argv)
    try:
        return build_config(args)
    except InvalidInput as error:
        parser.error(error.message)  # exits with code 2


def first_set(environ: Mapping[str, str], *names: str, default: str = "") -> str:
    """The value of the first of ``names`` set (non-empty) in ``environ``, else ``default``."""
    for name in names:
        if environ.get(name):
            return environ[name]
    return default


def whole_number(value: str, *, field: str, minimum: int) -> int:
    """``value`` as an int of at least ``minimum``; ``InvalidInput`` naming ``field``."""
    try:
        number = int(value)
    except ValueError:
        raise InvalidInput(f"{field} {value!r} is not a whole number") from None
    if number < minimum:
        raise InvalidInput(f"{field} must be at least {minimum} (got {number})")
    return number


def positive_seconds(value: str, *, field: str) -> float:
    """``value`` as a positive, finite number of seconds; ``InvalidInput`` naming ``field``."""
    try:
        seconds = float(value)
    except ValueError:
        raise InvalidInput(f"{field} {value!r} is not a number of seconds") from None
    if not seconds > 0 or seconds == float("inf"):
        raise InvalidInput(f"{field} must be a positive number of seconds (got {value})")
    return seconds


def parse_log_level(value: str) -> str:
    """``value`` as a log level name (any case in, upper case out)."""
    level = value.upper()
    if level not in LOG_LEVELS:
        raise InvalidInput(f"--log-level {value!r}: use one of {', '.join(LOG_LEVELS)}")
    return level


def parse_log_format(value: str) -> str:
    """``value`` as a log format (``text`` or ``json``)."""
    chosen = value.lower()
    if chosen not in LOG_FORMATS:
        raise InvalidInput(f"--log-format {value!r}: use one of {', '.join(LOG_FORMATS)}")
    return chosen
