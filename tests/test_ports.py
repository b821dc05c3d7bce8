"""Ports picked for local processes are free, outside the ephemeral range, never twice."""

from __future__ import annotations

import random
import socket

import pytest

from deploy import ports
from deploy.ports import HOST, free_port


def _ephemeral_start() -> int:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as range_file:
        return int(range_file.read().split()[0])


def test_a_span_of_ports_is_free_and_below_the_ephemeral_range() -> None:
    port = free_port(span=2)
    assert port + 1 < _ephemeral_start()
    with socket.socket() as first, socket.socket() as second:
        first.bind((HOST, port))
        second.bind((HOST, port + 1))


def test_a_port_is_never_handed_out_twice() -> None:
    picked = [free_port() for _ in range(300)]
    assert len(set(picked)) == len(picked)


def test_a_port_in_use_is_not_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    busy_port, other_port = free_port(), free_port()
    draws = iter([busy_port, other_port])
    monkeypatch.setattr(random, "randint", lambda low, high: next(draws))
    with socket.socket() as busy:
        busy.bind((HOST, busy_port))
        busy.listen()
        ports._handed_out.difference_update({busy_port, other_port})
        assert free_port() == other_port
