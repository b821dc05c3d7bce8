"""Token texts and records: random, stored only as a keyed hash, checked in constant time,
and never printed; the policy that maps RPCs to scopes."""

from __future__ import annotations

import json

import pytest

from registry import (
    InvalidInput,
    PermissionDenied,
    Unauthenticated,
)
from registry.auth import (
    SESSION_METHOD_SCOPES,
    TokenAccess,
    TokenRecord,
    bearer_of,
    issue_token,
    parse_token,
    token_id_of,
)
from registry.auth.tokens import admin_record_of


def test_a_token_is_random_and_its_record_holds_no_secret() -> None:
    first = issue_token(workspace_id="ws-1", scopes=["sessions.read"])
    second = issue_token(workspace_id="ws-1", scopes=["sessions.read"])
    assert first.text != second.text
    token_id, secret = parse_token(first.text)
    assert token_id == first.record.token_id
    assert len(secret) == 43  # 256 bits
    stored = first.record.to_json()
    assert secret.encode() not in stored
    assert first.text not in repr(first)
    assert TokenRecord.from_json(stored) == first.record
    assert first.record.matches(secret)
    assert not first.record.matches(parse_token(second.text)[1])


def test_scopes_are_checked_and_deduplicated() -> None:
    issued = issue_token(workspace_id="ws-1", scopes=["messages.send", "sessions.read"] * 2)
    assert issued.record.scopes == ("sessions.read", "messages.send")
    with pytest.raises(InvalidInput, match="unknown scope 'admin'"):
        issue_token(workspace_id="ws-1", scopes=["admin"])
    with pytest.raises(InvalidInput, match="at least one scope"):
        issue_token(workspace_id="ws-1", scopes=[])
    with pytest.raises(InvalidInput):
        issue_token(workspace_id="", scopes=["sessions.read"])


@pytest.mark.parametrize(
    "text", ["", "smt_", "smt_0123456789ab_short", "Bearer x", "smt_0123456789AB_" + "a" * 43]
)
def test_text_that_is_not_a_token_is_unauthenticated_without_echoing_it(text: str) -> None:
    with pytest.raises(Unauthenticated) as refused:
        parse_token(text)
    assert text not in refused.value.message or not text
    assert token_id_of(text) == "?"


def test_the_admin_token_file_must_hold_a_token() -> None:
    with pytest.raises(InvalidInput, match="does not hold a token") as refused:
        admin_record_of("my-password")
    assert "my-password" not in refused.value.message
    text = issue_token(is_admin=True).text
    record = admin_record_of(text)
    assert record.is_admin and record.matches(parse_token(text)[1])


@pytest.mark.parametrize(
    "value",
    [b"[]", b"{}", b'{"token_id": "../x"}', b"not json", json.dumps({"scopes": 5}).encode()],
)
def test_a_stored_record_that_is_not_one_is_refused(value: bytes) -> None:
    with pytest.raises((ValueError, TypeError)):
        TokenRecord.from_json(value)


def test_bearer_metadata_is_read_case_insensitively() -> None:
    assert bearer_of([("authorization", "bearer abc")]) == "abc"
    assert bearer_of([("authorization", "Bearer  abc ")]) == "abc"
    assert bearer_of([("authorization", "Basic abc")]) == ""
    assert bearer_of([("other", "x")]) is None


class TestPolicy:
    def setup_method(self) -> None:
        self.reader = issue_token(workspace_id="ws-1", scopes=["sessions.read"])
        self.admin = issue_token(is_admin=True)
        self.expired = issue_token(workspace_id="ws-1", scopes=["sessions.read"])
        records = {each.record.token_id: each.record for each in (self.reader, self.admin)}
        expired = self.expired.record
        records[expired.token_id] = TokenRecord(
            **{**expired.__dict__, "expires_at": expired.created_at - 1}
        )
        self.access = TokenAccess(records)

    def test_a_workspace_token_grants_its_scopes_on_its_workspace_only(self) -> None:
        self.access.check_workspace(self.reader.text, "GetSession", "ws-1")
        with pytest.raises(PermissionDenied, match="not for workspace 'ws-2'"):
            self.access.check_workspace(self.reader.text, "GetSession", "ws-2")
        with pytest.raises(PermissionDenied, match=r"lacks the scope messages\.send"):
            self.access.check_workspace(self.reader.text, "SendMessage", "ws-1")
        with pytest.raises(PermissionDenied, match="needs an admin token"):
            self.access.check_admin(self.reader.text, "DrainNode")
        with pytest.raises(PermissionDenied, match="needs an admin token"):
            self.access.check_workspace(self.reader.text, "SomeFutureMethod", "ws-1")

    def test_an_admin_token_grants_everything(self) -> None:
        for method in SESSION_METHOD_SCOPES:
            self.access.check_workspace(self.admin.text, method, "any-workspace")
        self.access.check_admin(self.admin.text, "DrainNode")

    def test_unknown_wrong_or_expired_tokens_are_unauthenticated(self) -> None:
        token_id, secret = parse_token(self.reader.text)
        forged = f"smt_{token_id}_{secret[::-1]}"
        for bearer in (None, "", forged, self.expired.text, issue_token(is_admin=True).text):
            with pytest.raises(Unauthenticated) as refused:
                self.access.check_workspace(bearer, "GetSession", "ws-1")
            assert secret not in refused.value.message
