"""``python -m testkit.blockable_node [node flags]``: a node whose event loop, or whose
storage, a test can block.

- On SIGUSR1 the main thread — the node's event loop — sleeps for the number of seconds
  written in the file named by ``SESSIONMESH_BLOCK_SECONDS_FILE``, while the node's other
  threads (its heartbeat) go on: a node whose loop is saturated or wedged.
- On SIGUSR2 its storage hangs, or answers again: every ``fsync`` and ``fdatasync`` of the
  session storage (and of its health probe) waits until the next SIGUSR2 — a hung NFS mount,
  as seen from this one node.

Test kit only: the product has no such hook.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from node import commit_io
from node.__main__ import main as node_main

_storage_answers = threading.Event()
_storage_answers.set()
_real_fsync = commit_io.fsync_file
_real_fdatasync = commit_io.fdatasync_file


def _block(signal_number: int, frame: FrameType | None) -> None:
    seconds = float(Path(os.environ["SESSIONMESH_BLOCK_SECONDS_FILE"]).read_text())
    time.sleep(seconds)  # on the main thread: the event loop makes no progress meanwhile


def _toggle_storage(signal_number: int, frame: FrameType | None) -> None:
    if _storage_answers.is_set():
        _storage_answers.clear()
    else:
        _storage_answers.set()


def _hanging_fsync(descriptor: int) -> None:
    _storage_answers.wait()
    _real_fsync(descriptor)


def _hanging_fdatasync(descriptor: int) -> None:
    _storage_answers.wait()
    _real_fdatasync(descriptor)


def main() -> None:
    """Run a node that blocks its loop on SIGUSR1 and hangs (or frees) its storage on SIGUSR2."""
    signal.signal(signal.SIGUSR1, _block)
    signal.signal(signal.SIGUSR2, _toggle_storage)
    commit_io.fsync_file = _hanging_fsync
    commit_io.fdatasync_file = _hanging_fdatasync
    node_main()


if __name__ == "__main__":
    main()
