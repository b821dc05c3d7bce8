"""simnet: the stand-in messaging network that the ``sim`` driver talks to (its wire format is
:mod:`simnet.protocol`)."""

from simnet import protocol
from simnet.admin import SimNetAdmin, SimNetAdminError
from simnet.protocol import ProtocolError, decode_line, encode_line
from simnet.records import Delivery, InboundMessage, LiveInterval, Pairing, ReplacedEvent
from simnet.server import SimNet

__all__ = [
    "Delivery",
    "InboundMessage",
    "LiveInterval",
    "Pairing",
    "ProtocolError",
    "ReplacedEvent",
    "SimNet",
    "SimNetAdmin",
    "SimNetAdminError",
    "decode_line",
    "encode_line",
    "protocol",
]
