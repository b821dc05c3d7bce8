"""The gateway reads workspace_id from any request's wire bytes, and nothing else breaks it."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.wire import workspace_id_of
from protos import session_pb2
from registry import InvalidInput
from registry.ids import MAX_ID_LENGTH

SERVICE = session_pb2.DESCRIPTOR.services_by_name["SessionService"]
REQUEST_TYPES: list[Descriptor] = [method.input_type for method in SERVICE.methods]
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"

workspace_ids = st.text(alphabet=ID_ALPHABET, min_size=1, max_size=MAX_ID_LENGTH)
_SCALARS = {
    FieldDescriptor.TYPE_STRING: st.text(max_size=50),
    FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_ENUM: st.integers(0, 5),
}


@st.composite
def requests(draw: st.DrawFn, message_type: Descriptor | None = None) -> Message:
    """A request message of the API with random values in every field."""
    descriptor = message_type or draw(st.sampled_from(REQUEST_TYPES))
    message = GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if field.name == "workspace_id":
            message.workspace_id = draw(workspace_ids)  # type: ignore[attr-defined]
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            getattr(message, field.name).update(
                draw(st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4))
            )
        else:
            setattr(message, field.name, draw(_SCALARS[field.type]))
    return message


class TestContract:
    """Every request of the API carries workspace_id as string field 1."""

    @pytest.mark.parametrize("descriptor", REQUEST_TYPES, ids=lambda d: d.name)
    def test_field_one_is_workspace_id(self, descriptor: Descriptor) -> None:
        field = descriptor.fields_by_number[1]
        assert (field.name, field.type) == ("workspace_id", FieldDescriptor.TYPE_STRING)


class TestWorkspaceIdOf:
    """workspace_id_of returns exactly the serialized workspace_id."""

    @settings(max_examples=300, deadline=None)
    @given(requests())
    def test_reads_the_workspace_of_any_request(self, request: Message) -> None:
        data = request.SerializeToString()
        assert workspace_id_of(data) == request.workspace_id  # type: ignore[attr-defined]

    @settings(max_examples=100, deadline=None)
    @given(requests(), st.binary(max_size=40))
    def test_reads_it_with_unknown_fields_before_it(self, request: Message, noise: bytes) -> None:
        # Field 15 (varint) and field 16 (fixed32/64) first: the scanner must skip them.
        prefix = b"\x78\x2a" + b"\x85\x01" + b"abcd" + b"\x81\x01" + b"12345678"
        data = prefix + request.SerializeToString()
        assert workspace_id_of(data) == request.workspace_id  # type: ignore[attr-defined]

    def test_last_workspace_field_wins_like_protobuf(self) -> None:
        first = session_pb2.GetSessionRequest(workspace_id="first").SerializeToString()
        last = session_pb2.GetSessionRequest(workspace_id="last").SerializeToString()
        parsed = session_pb2.GetSessionRequest.FromString(first + last)
        assert workspace_id_of(first + last) == parsed.workspace_id == "last"


class TestMalformed:
    """Bad bytes raise InvalidInput and never any other exception."""

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=200))
    def test_garbage_is_invalid_input_or_a_valid_id(self, data: bytes) -> None:
        try:
            workspace_id = workspace_id_of(data)
        except InvalidInput:
            return
        assert 1 <= len(workspace_id) <= MAX_ID_LENGTH
        assert set(workspace_id) <= set(ID_ALPHABET)

    @settings(max_examples=300, deadline=None)
    @given(requests(), st.data())
    def test_truncated_workspace_field_is_invalid_input(
        self, request: Message, data: st.DataObject
    ) -> None:
        serialized = request.SerializeToString()
        workspace_field_end = 2 + len(request.workspace_id)  # type: ignore[attr-defined]
        cut = data.draw(st.integers(1, workspace_field_end - 1))
        with pytest.raises(InvalidInput):
            workspace_id_of(serialized[:cut])

    @settings(max_examples=300, deadline=None)
    @given(requests(), st.data())
    def test_truncated_anywhere_is_invalid_input_or_the_same_id(
        self, request: Message, data: st.DataObject
    ) -> None:
        serialized = request.SerializeToString()
        cut = data.draw(st.integers(0, max(len(serialized) - 1, 0)))
        try:
            workspace_id = workspace_id_of(serialized[:cut])
        except InvalidInput:
            return
        assert workspace_id == request.workspace_id  # type: ignore[attr-defined]

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            (b"", "workspace_id is required"),
            (b"\x0b\x0c", "wire type 3"),
            (b"\x08\x01", "not a string"),
            (b"\x0a\x02\xff\xfe", "UTF-8"),
            (b"\x0a\x03a/b", "invalid"),
            (b"\x02\x01", "numbered 0"),
            (b"\x10" + b"\xff" * 11, "longer than 10 bytes"),
        ],
        ids=[
            "empty",
            "group",
            "varint-field-one",
            "not-utf8",
            "bad-id",
            "field-zero",
            "long-varint",
        ],
    )
    def test_each_defect_is_named(self, data: bytes, message: str) -> None:
        with pytest.raises(InvalidInput, match=message):
            workspace_id_of(data)
