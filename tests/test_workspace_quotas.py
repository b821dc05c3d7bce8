"""Per-workspace quotas on the owner node: sessions per workspace, and a send rate (a token
bucket). Past either: RESOURCE_EXHAUSTED, nothing created or written, other workspaces
untouched; the send refusal carries the wait as its retry hint."""

from __future__ import annotations

from pathlib import Path

import grpc

from node.storage import SessionStorage
from node.workspace_quotas import SendRate
from protos import session_pb2 as pb
from registry import RETRY_AFTER_METADATA_KEY
from simnet import SimNet
from testkit import running_node
from tests.calls import create, error_of
from tests.probes import trailing_dict


def _send(workspace_id: str, message_id: str) -> pb.SendMessageRequest:
    return pb.SendMessageRequest(
        workspace_id=workspace_id,
        session_id="s-1",
        client_message_id=message_id,
        to="+14155550101",
        text="hello",
    )


class TestSessionsPerWorkspace:
    async def test_one_more_session_is_refused_the_existing_ones_still_answer(
        self, tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
    ) -> None:
        async with running_node(
            tmp_path, etcd_url, cluster_name, simnet,
            extra_flags=["--max-sessions-per-workspace", "2"],
        ) as running:  # fmt: skip
            await create(running.stub, "ws-q", "s-1")
            await create(running.stub, "ws-q", "s-2")
            error = await error_of(create(running.stub, "ws-q", "s-3"))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "MAX_SESSIONS_PER_WORKSPACE" in (error.details() or "")
            assert (await create(running.stub, "ws-q", "s-1")).session_id == "s-1"  # idempotent
            await create(running.stub, "ws-other", "s-3")  # another workspace has its own
            assert await SessionStorage(running.storage).load_meta("ws-q", "s-3") is None


class TestSendRatePerWorkspace:
    async def test_a_burst_past_the_rate_is_refused_with_the_wait_as_its_hint(
        self, tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
    ) -> None:
        async with running_node(
            tmp_path, etcd_url, cluster_name, simnet,
            extra_flags=["--sends-per-second-per-workspace", "0.5"],  # a burst of one
        ) as running:  # fmt: skip
            for workspace in ("ws-r", "ws-other"):
                await create(running.stub, workspace, "s-1")
            await running.stub.SendMessage(_send("ws-r", "m-1"), timeout=10)
            error = await error_of(running.stub.SendMessage(_send("ws-r", "m-2"), timeout=10))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            hint_ms = int(trailing_dict(error)[RETRY_AFTER_METADATA_KEY])
            assert 1000 <= hint_ms <= 2000  # one token every 2 s
            await running.stub.SendMessage(_send("ws-other", "m-1"), timeout=10)
            stored = await SessionStorage(running.storage).load_outbox("ws-r", "s-1")
            assert [entry.client_message_id for entry in stored] == ["m-1"]


class TestTheBucket:
    def test_it_refills_at_its_rate_up_to_two_seconds_of_sends(self) -> None:
        now = [100.0]
        rate = SendRate(10, clock=lambda: now[0])
        assert [rate.take("ws") for _ in range(20)] == [0] * 20  # 2 s of sends at once
        assert rate.take("ws") == 100  # the next token in 100 ms
        now[0] += 0.25
        assert [rate.take("ws") for _ in range(2)] == [0, 0]
        assert rate.take("ws") > 0
        assert rate.take("ws-b") == 0  # each workspace its own bucket
        assert SendRate(0).take("ws") == 0  # 0: no quota
