"""neonize, imported in one place: the rest of the driver takes what it uses from here.

neonize 0.5 reads ``uname -a`` through ``os.popen`` at import and never closes the pipe nor
waits for the child (a ``ResourceWarning``, an error under pytest, at the next subprocess the
process starts): for this import only, ``os.popen`` reads the whole output and closes.
Importing neonize downloads nothing as long as its wheel's compiled
library is in place (it fetches one from GitHub only when the file is missing or of another
version).
"""

from __future__ import annotations

import io
import os
from typing import Any
from unittest import mock

_popen = os.popen


def _closing_popen(command: str, mode: str = "r", buffering: int = -1) -> Any:
    with _popen(command, mode, buffering) as pipe:
        return io.StringIO(pipe.read())


with mock.patch.object(os, "popen", _closing_popen):
    from neonize import _binder as binder
    from neonize.client import NewClient
    from neonize.events import EVENT_TO_INT
    from neonize.exc import PairPhoneError, SendMessageError
    from neonize.proto import Neonize_pb2 as wa
    from neonize.proto.waCompanionReg.WAWebProtobufsCompanionReg_pb2 import DeviceProps
    from neonize.utils import log_whatsmeow

__all__ = [
    "EVENT_TO_INT",
    "DeviceProps",
    "NewClient",
    "PairPhoneError",
    "SendMessageError",
    "binder",
    "log_whatsmeow",
    "wa",
]
