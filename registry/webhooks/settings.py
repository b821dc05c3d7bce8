"""``--webhook-allow-private``: whether webhooks may point at loopback, link-local and
private addresses (off by default; on for local tests and ``make up``), shared by the
gateway (the default webhook) and the nodes (workspace webhooks, every delivery)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from registry.errors import InvalidInput
from registry.flags import first_set

ALLOW_PRIVATE_VARIABLE = "SESSIONMESH_WEBHOOK_ALLOW_PRIVATE"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def add_webhook_flags(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """``--webhook-allow-private``."""
    parser.add_argument(
        "--webhook-allow-private",
        nargs="?",
        const="true",
        default=first_set(environ, ALLOW_PRIVATE_VARIABLE) or "false",
        help=(
            "let webhooks point at loopback, link-local and private addresses (local use "
            f"only; env {ALLOW_PRIVATE_VARIABLE}; default %(default)s)"
        ),
    )


def allow_private_from_args(args: argparse.Namespace) -> bool:
    """Whether ``--webhook-allow-private`` is on; ``InvalidInput`` for a value not a yes/no."""
    value = str(args.webhook_allow_private).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidInput(f"--webhook-allow-private {args.webhook_allow_private!r} is not true/false")
