"""Drivers: the code that talks to the messaging network for one session."""

from node.drivers.base import Driver, DriverEvent, DriverEventKind, DriverFactory, EventCallback
from node.drivers.sim import SimDriver, SimDriverFactory

__all__ = [
    "Driver",
    "DriverEvent",
    "DriverEventKind",
    "DriverFactory",
    "EventCallback",
    "SimDriver",
    "SimDriverFactory",
]
