"""How big the chaos tests run: reduced by default (fast, still exercising the behaviour),
the issue's full sizes with ``SESSIONMESH_FULL=1``."""

from __future__ import annotations

import os
from dataclasses import dataclass

FULL_SIZE_VARIABLE = "SESSIONMESH_FULL"


@dataclass(frozen=True)
class ChaosSizes:
    """How big a chaos test (process mesh under load) runs."""

    node_count: int
    """Nodes the mesh starts with."""
    workspace_count: int
    """Workspaces the sessions are spread over."""
    session_count: int
    """Sessions created before the chaos starts."""
    load_workers: int
    """Concurrent callers of the :class:`~testkit.workload.LoadClient`."""


REDUCED_CHAOS_SIZES = ChaosSizes(
    node_count=3, workspace_count=60, session_count=120, load_workers=12
)
FULL_CHAOS_SIZES = ChaosSizes(node_count=3, workspace_count=60, session_count=300, load_workers=32)


def is_full_size() -> bool:
    """Whether ``SESSIONMESH_FULL=1`` asks for the full sizes."""
    return os.environ.get(FULL_SIZE_VARIABLE) == "1"


def chaos_sizes() -> ChaosSizes:
    """The sizes for this run: reduced unless ``SESSIONMESH_FULL=1``."""
    return FULL_CHAOS_SIZES if is_full_size() else REDUCED_CHAOS_SIZES
