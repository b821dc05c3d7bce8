"""Reading ``workspace_id`` straight from a request's wire bytes, as protobuf's own parser
(upb) reads it.

The API guarantees that every request message carries ``workspace_id`` as field 1
(length-delimited), so the gateway routes without decoding the message: a small scanner walks
the tags, skips every other field and keeps the last field 1 (protobuf's "last one wins"
rule). On every malformed input it decides as upb decides for a message whose only field is
``string workspace_id = 1`` (``tests/test_wire.py`` checks that on generated and hostile
bytes):

- a tag is a varint of at most 5 bytes that fits 32 bits, with a field number other than 0
  (except inside a skipped group, where upb lets 0 pass);
- a value varint has at most 10 bytes; a length at most 5, and no more than what is left;
- wire types 6 and 7 do not exist; groups (3 … 4) are skipped, nested at most 100 deep, each
  ended by the end tag of its own field number;
- field 1 in another wire type than length-delimited is an unknown field, skipped;
- field 1's bytes must be UTF-8 (proto3 strings).

Its cost is one pass over the bytes, which the request size limit bounds.
"""

from __future__ import annotations

from registry import InvalidInput, validate_id

_WORKSPACE_FIELD_NUMBER = 1
_VARINT, _FIXED64, _LENGTH_DELIMITED, _START_GROUP, _END_GROUP, _FIXED32 = 0, 1, 2, 3, 4, 5
_MAX_VARINT_BYTES = 10
_MAX_TAG_BYTES = 5
_MAX_LENGTH_BYTES = 5
_MAX_TAG = (1 << 32) - 1
MAX_GROUP_DEPTH = 100
"""upb's default nesting limit."""


def _read_varint(data: bytes, position: int, max_bytes: int) -> tuple[int, int]:
    """The varint at ``position`` (at most ``max_bytes`` long) and the position after it."""
    value = 0
    for index in range(max_bytes):
        if position >= len(data):
            raise InvalidInput("request is truncated inside a varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, position
    raise InvalidInput(f"request has a varint longer than {max_bytes} bytes")


def _read_tag(data: bytes, position: int, *, in_group: bool = False) -> tuple[int, int, int]:
    """``(field_number, wire_type, position after)`` of the tag at ``position`` (field number
    0 passes inside a skipped group only, as upb lets it)."""
    tag, position = _read_varint(data, position, _MAX_TAG_BYTES)
    if tag > _MAX_TAG:
        raise InvalidInput("request has a tag past 32 bits")
    field_number, wire_type = tag >> 3, tag & 0x7
    if field_number == 0 and not in_group:
        raise InvalidInput("request has a field numbered 0")
    return field_number, wire_type, position


def _skip(data: bytes, position: int, count: int) -> int:
    end = position + count
    if end > len(data):
        raise InvalidInput("request is truncated inside a field")
    return end


def _skip_value(data: bytes, position: int, wire_type: int) -> int:
    """The position after a value that is not a group."""
    if wire_type == _VARINT:
        return _read_varint(data, position, _MAX_VARINT_BYTES)[1]
    if wire_type == _FIXED64:
        return _skip(data, position, 8)
    if wire_type == _FIXED32:
        return _skip(data, position, 4)
    if wire_type == _LENGTH_DELIMITED:
        length, position = _read_varint(data, position, _MAX_LENGTH_BYTES)
        return _skip(data, position, length)
    raise InvalidInput(f"request has an invalid wire type {wire_type}")


def _skip_group(data: bytes, position: int, field_number: int) -> int:
    """The position after the group of ``field_number`` whose start tag ends at ``position``
    (its nested groups included, without recursion)."""
    open_groups = [field_number]
    while open_groups:
        if len(open_groups) > MAX_GROUP_DEPTH:
            raise InvalidInput(f"request nests groups deeper than {MAX_GROUP_DEPTH}")
        if position >= len(data):
            raise InvalidInput("request is truncated inside a group")
        number, wire_type, position = _read_tag(data, position, in_group=True)
        if wire_type == _START_GROUP:
            open_groups.append(number)
        elif wire_type == _END_GROUP:
            if open_groups.pop() != number:
                raise InvalidInput("request ends a group it did not start")
        else:
            position = _skip_value(data, position, wire_type)
    return position


def raw_workspace_id(data: bytes) -> str:
    """``workspace_id`` (field 1) of a serialized request, as protobuf would decode it (empty
    when absent); ``InvalidInput`` where protobuf refuses the bytes."""
    position = 0
    found = ""
    while position < len(data):
        field_number, wire_type, position = _read_tag(data, position)
        if wire_type == _START_GROUP:
            position = _skip_group(data, position, field_number)
        elif wire_type == _END_GROUP:
            raise InvalidInput("request ends a group it did not start")
        elif field_number == _WORKSPACE_FIELD_NUMBER and wire_type == _LENGTH_DELIMITED:
            length, start = _read_varint(data, position, _MAX_LENGTH_BYTES)
            position = _skip(data, start, length)
            try:  # every occurrence, as protobuf checks each
                found = data[start:position].decode("utf-8")
            except UnicodeDecodeError as error:
                raise InvalidInput("workspace_id is not valid UTF-8") from error
        else:
            position = _skip_value(data, position, wire_type)
    return found


def workspace_id_of(data: bytes) -> str:
    """The ``workspace_id`` (field 1) of a serialized request, validated as an id.

    Raises ``InvalidInput`` for malformed bytes, a missing or invalid ``workspace_id``.
    """
    workspace_id = raw_workspace_id(data)
    if not workspace_id:
        raise InvalidInput("workspace_id is required")
    return validate_id(workspace_id, field="workspace_id")
