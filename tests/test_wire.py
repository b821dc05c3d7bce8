"""The gateway reads workspace_id from any request's wire bytes, decides as protobuf's own
parser (upb) decides on every malformed input, and nothing else breaks it."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.internal import api_implementation
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.wire import MAX_GROUP_DEPTH, raw_workspace_id, workspace_id_of
from protos import session_pb2, webhook_pb2
from registry import InvalidInput
from registry.ids import MAX_ID_LENGTH
from testkit import is_full_size

SERVICES = (
    session_pb2.DESCRIPTOR.services_by_name["SessionService"],
    webhook_pb2.DESCRIPTOR.services_by_name["WebhookService"],
)
"""The services the gateway forwards by the workspace_id it reads from the bytes."""
REQUEST_TYPES: list[Descriptor] = [
    method.input_type for service in SERVICES for method in service.methods
]
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"

workspace_ids = st.text(alphabet=ID_ALPHABET, min_size=1, max_size=MAX_ID_LENGTH)
_SCALARS = {
    FieldDescriptor.TYPE_STRING: st.text(max_size=50),
    FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
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
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(st.lists(_SCALARS[field.type], max_size=4)))
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
            (b"\x0b\x0c", "workspace_id is required"),  # a group, skipped: no workspace
            (b"\x08\x01", "workspace_id is required"),  # field 1 as a varint: unknown
            (b"\x0c", "did not start"),
            (b"\x16", "invalid wire type 6"),
            (b"\x80\x80\x80\x80\x10\x00", "past 32 bits"),
            (b"\x0a\x02\xff\xfe", "UTF-8"),
            (b"\x0a\x03a/b", "invalid"),
            (b"\x02\x01", "numbered 0"),
            (b"\x10" + b"\xff" * 11, "longer than 10 bytes"),
        ],
        ids=[
            "empty",
            "group",
            "varint-field-one",
            "lone-end-group",
            "wire-type-6",
            "tag-past-32-bits",
            "not-utf8",
            "bad-id",
            "field-zero",
            "long-varint",
        ],
    )
    def test_each_defect_is_named(self, data: bytes, message: str) -> None:
        with pytest.raises(InvalidInput, match=message):
            workspace_id_of(data)


def _workspace_only() -> type[Message]:
    """A proto3 message whose only field is ``string workspace_id = 1``: what upb makes of
    a request's field 1, every other field being unknown to it."""
    file = descriptor_pb2.FileDescriptorProto(
        name="wire_probe.proto", package="wire_probe", syntax="proto3"
    )
    message = file.message_type.add(name="WorkspaceOnly")
    message.field.add(
        name="workspace_id",
        number=1,
        type=FieldDescriptor.TYPE_STRING,
        label=FieldDescriptor.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return GetMessageClass(pool.FindMessageTypeByName("wire_probe.WorkspaceOnly"))


WORKSPACE_ONLY = _workspace_only()


def _upb(data: bytes) -> str | None:
    try:
        return str(WORKSPACE_ONLY.FromString(data).workspace_id)  # type: ignore[attr-defined]
    except DecodeError:
        return None


def _ours(data: bytes) -> str | None:
    try:
        return raw_workspace_id(data)
    except InvalidInput:
        return None


def _varint(value: int, padding: int = 0) -> bytes:
    """``value`` as a varint, with ``padding`` extra (non-minimal) continuation bytes."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    if padding:
        out.append(value | 0x80)
        out.extend(b"\x80" * (padding - 1))
        out.append(0)
    else:
        out.append(value)
    return bytes(out)


_field_numbers = st.one_of(
    st.sampled_from([0, 1, 1, 1, 2, 3, 15, 16, 2**29 - 1, 2**29, 2**32]),
    st.integers(0, 2**35),
)


@st.composite
def _chunks(draw: st.DrawFn, depth: int = 0) -> bytes:
    """One field on the wire, well or badly formed: a tag (maybe padded or oversized) and a
    payload of its wire type or of another one; groups nest."""
    number = draw(_field_numbers)
    wire_type = draw(st.integers(0, 7))
    tag = _varint((number << 3) | wire_type, padding=draw(st.sampled_from([0, 0, 0, 1, 4, 6])))
    kind = draw(st.sampled_from(["good", "good", "good", "random"]))
    if kind == "random":
        return tag + draw(st.binary(max_size=12))
    if wire_type == 0:
        payload = _varint(draw(st.integers(0, 2**70)), padding=draw(st.sampled_from([0, 0, 3, 9])))
    elif wire_type == 1:
        payload = draw(st.binary(min_size=8, max_size=8))
    elif wire_type == 5:
        payload = draw(st.binary(min_size=4, max_size=4))
    elif wire_type == 2:
        body = draw(
            st.one_of(
                st.text(alphabet=ID_ALPHABET, max_size=8).map(str.encode),
                st.binary(max_size=8),
                st.sampled_from([b"\xed\xa0\x80", b"\xc0\x80", "é".encode()]),
            )
        )
        length = len(body) + draw(st.sampled_from([0, 0, 0, 1, -1]))
        payload = _varint(max(length, 0), padding=draw(st.sampled_from([0, 0, 3, 5]))) + body
    elif wire_type == 3 and depth < 4:
        inner = b"".join(draw(st.lists(_chunks(depth + 1), max_size=3)))
        end_number = draw(st.sampled_from([number, number, number, number + 1]))
        payload = inner + (b"" if draw(st.booleans()) and depth else _varint((end_number << 3) | 4))
    else:
        payload = b""
    return tag + payload


_wire_messages = st.lists(_chunks(), max_size=6).map(b"".join)
AGREEMENT_EXAMPLES = 5000 if is_full_size() else 600


class TestAgreesWithProtobuf:
    """For any bytes: the gateway refuses exactly what upb refuses, and otherwise reads the
    workspace_id upb reads."""

    def test_protobuf_here_is_upb(self) -> None:
        assert api_implementation.Type() == "upb"

    @settings(max_examples=AGREEMENT_EXAMPLES, deadline=None)
    @given(_wire_messages)
    def test_on_generated_wire_structures(self, data: bytes) -> None:
        assert _ours(data) == _upb(data), data

    @settings(max_examples=AGREEMENT_EXAMPLES // 2, deadline=None)
    @given(st.binary(max_size=64))
    def test_on_random_bytes(self, data: bytes) -> None:
        assert _ours(data) == _upb(data), data

    @settings(max_examples=300, deadline=None)
    @given(requests(), _wire_messages, _wire_messages)
    def test_around_real_requests(self, request: Message, before: bytes, after: bytes) -> None:
        data = before + request.SerializeToString() + after
        assert _ours(data) == _upb(data), data

    @pytest.mark.parametrize("depth", [MAX_GROUP_DEPTH - 1, MAX_GROUP_DEPTH, MAX_GROUP_DEPTH + 1])
    def test_group_nesting_stops_where_upbs_does(self, depth: int) -> None:
        data = b"\x13" * depth + b"\x14" * depth + b"\x0a\x02ab"
        assert _ours(data) == _upb(data)

    def test_its_cost_is_one_pass_even_for_deep_or_long_input(self) -> None:
        # 64 KiB (the request limit) of nested groups or of tiny fields: no recursion, no blowup.
        assert _ours(b"\x13" * 65536) is None
        assert _ours(b"\x10\x00" * 32768) == ""
