"""Reading ``workspace_id`` straight from a request's wire bytes.

The API guarantees that every request message carries ``workspace_id`` as field 1
(length-delimited), so the gateway routes without decoding the message: a tiny scanner walks
the tags, skips every other field and stops at the last field 1 (protobuf's "last one
wins" rule for repeated scalar fields).
"""

from __future__ import annotations

from registry import InvalidInput, validate_id

_WORKSPACE_FIELD_NUMBER = 1
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
_MAX_VARINT_BYTES = 10


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    """The varint at ``position`` and the position after it."""
    value = 0
    for index in range(_MAX_VARINT_BYTES):
        if position >= len(data):
            raise InvalidInput("request is truncated inside a varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, position
    raise InvalidInput("request has a varint longer than 10 bytes")


def _skip(data: bytes, position: int, count: int) -> int:
    end = position + count
    if end > len(data):
        raise InvalidInput("request is truncated inside a field")
    return end


def workspace_id_of(data: bytes) -> str:
    """The ``workspace_id`` (field 1) of a serialized request, validated as an id.

    Raises ``InvalidInput`` for malformed bytes, a missing or invalid ``workspace_id``.
    """
    position = 0
    found: bytes | None = None
    while position < len(data):
        tag, position = _read_varint(data, position)
        field_number, wire_type = tag >> 3, tag & 0x7
        if field_number == 0:
            raise InvalidInput("request has a field numbered 0")
        if wire_type == _VARINT:
            _, position = _read_varint(data, position)
        elif wire_type == _FIXED64:
            position = _skip(data, position, 8)
        elif wire_type == _FIXED32:
            position = _skip(data, position, 4)
        elif wire_type == _LENGTH_DELIMITED:
            length, position = _read_varint(data, position)
            start, position = position, _skip(data, position, length)
            if field_number == _WORKSPACE_FIELD_NUMBER:
                found = data[start:position]
        else:
            # Groups (3, 4) are not used by this API; 6 and 7 do not exist.
            raise InvalidInput(f"request has an unsupported wire type {wire_type}")
        if field_number == _WORKSPACE_FIELD_NUMBER and wire_type != _LENGTH_DELIMITED:
            raise InvalidInput("request field 1 (workspace_id) is not a string")
    if found is None:
        raise InvalidInput("workspace_id is required")
    try:
        workspace_id = found.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInput("workspace_id is not valid UTF-8") from error
    return validate_id(workspace_id, field="workspace_id")
