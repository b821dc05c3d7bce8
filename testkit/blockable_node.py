"""``python -m testkit.blockable_node [node flags]``: a node whose event loop a test can block.

On SIGUSR1 the main thread — the node's event loop — sleeps for the number of seconds written
in the file named by ``SESSIONMESH_BLOCK_SECONDS_FILE``, while the node's other threads (its
heartbeat) go on: a node whose loop is saturated or wedged, as the busy-loop tests need one.
Test kit only: the product has no such hook.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import FrameType

from node.__main__ import main as node_main


def _block(signal_number: int, frame: FrameType | None) -> None:
    seconds = float(Path(os.environ["SESSIONMESH_BLOCK_SECONDS_FILE"]).read_text())
    time.sleep(seconds)  # on the main thread: the event loop makes no progress meanwhile


def main() -> None:
    """Run a node that blocks its loop on SIGUSR1."""
    signal.signal(signal.SIGUSR1, _block)
    node_main()


if __name__ == "__main__":
    main()
