"""``sessionmesh-db``: migrate the accounts database.

::

    python -m registry.accounts upgrade [REV] [--database-url URL]
    python -m registry.accounts downgrade REV [--database-url URL]
    python -m registry.accounts current [--database-url URL]

The URL defaults to ``$DATABASE_URL``, else ``sqlite:///.mesh/accounts.db``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from sqlalchemy.exc import SQLAlchemyError

from registry.accounts.engine import DEFAULT_DATABASE_URL
from registry.accounts.schema import current, downgrade, upgrade


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessionmesh-db", description="Migrate the sessionmesh accounts database."
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
        help="SQLAlchemy URL (default: $DATABASE_URL, else %(default)s)",
    )
    # The flag is also accepted after the command (`sessionmesh-db upgrade --database-url …`).
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--database-url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser(
        "upgrade", parents=[shared], help="migrate up (default: to the newest revision)"
    )
    up.add_argument("revision", nargs="?", default="head")
    down = commands.add_parser(
        "downgrade", parents=[shared], help="migrate down to REVISION ('base' = empty)"
    )
    down.add_argument("revision")
    commands.add_parser("current", parents=[shared], help="print the revision the database is at")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    arguments = _parser().parse_args(argv)
    url: str = arguments.database_url
    try:
        if arguments.command == "upgrade":
            upgrade(url, arguments.revision)
        elif arguments.command == "downgrade":
            downgrade(url, arguments.revision)
        print(current(url) or "none")
    except SQLAlchemyError as error:
        print(f"sessionmesh-db: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
