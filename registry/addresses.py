"""``host:port`` as every flag, record and client of the mesh spells an address: one parser."""

from __future__ import annotations

from registry.errors import InvalidInput

MAX_PORT = 65535


def parse_host_port(
    value: str, *, field: str, allow_empty_host: bool = False, allow_port_zero: bool = True
) -> tuple[str, int]:
    """``"127.0.0.1:7001"`` → ``("127.0.0.1", 7001)``; ``"[::1]:7001"`` → ``("::1", 7001)``.

    Raises ``InvalidInput`` naming ``field``. Port 0 (any free port) is allowed unless
    ``allow_port_zero`` is False; an empty host (``":9100"``) only with ``allow_empty_host``.
    """
    host, separator, port_text = value.rpartition(":")
    host = host.strip("[]")
    lowest = 0 if allow_port_zero else 1
    is_valid = (
        bool(separator)
        and (bool(host) or allow_empty_host)
        and port_text.isdigit()
        and lowest <= int(port_text) <= MAX_PORT
    )
    if not is_valid:
        raise InvalidInput(
            f"{field} {value!r} is invalid: use HOST:PORT with a port {lowest}-{MAX_PORT}"
        )
    return host, int(port_text)
