"""Session folders written by the format before the message log — one
``outbox/<client_message_id>.json`` per message — are restored as they are: READY without a QR,
every message still queued delivered exactly once, every id still deduplicated, and the old
files retired once the session's log holds them."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from node.storage_records import OutboxEntry
from protos import session_pb2 as pb
from registry import MessageStatus
from simnet import SimNet
from testkit import eventually, running_node
from tests.calls import create, wait_state

FOLDER = Path("sessions") / "workspace_ws-1" / "s-1"


def _old_format_entry(message_id: str, seq: int, status: MessageStatus) -> bytes:
    """An outbox file as the format before the log wrote it (sorted keys, indent 1)."""
    entry = OutboxEntry(
        client_message_id=message_id,
        to="+14155550199",
        text=f"old {message_id}",
        status=status,
        accepted_at_unix=time.time() - 3600 + seq,
        seq=seq,
        accepted_by_node_id="node-old",
    )
    return json.dumps(asdict(entry), sort_keys=True, indent=1).encode()


class TestOldFolders:
    """A folder in the old format, left by a node that stopped before the upgrade."""

    async def test_restored_delivered_once_deduplicated_and_retired(
        self, tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
    ) -> None:
        # A paired session, stopped cleanly: its meta and credentials are in place.
        async with running_node(tmp_path, etcd_url, cluster_name, simnet) as node:
            await create(node.stub, "ws-1", "s-1")
            await wait_state(node.stub, "ws-1", "s-1", pb.SESSION_STATE_READY)
        folder = tmp_path / FOLDER
        # Rewrite its messages the old way: one delivered message, one still queued.
        (folder / "messages.log").unlink(missing_ok=True)
        (folder / "outbox").mkdir()
        (folder / "outbox" / "m-done.json").write_bytes(
            _old_format_entry("m-done", 1, MessageStatus.READ)
        )
        (folder / "outbox" / "m-queued.json").write_bytes(
            _old_format_entry("m-queued", 2, MessageStatus.QUEUED)
        )
        qr_before = simnet.qr_issued("ws-1/s-1")

        async with running_node(tmp_path, etcd_url, cluster_name, simnet) as node:
            await wait_state(node.stub, "ws-1", "s-1", pb.SESSION_STATE_READY)
            assert simnet.qr_issued("ws-1/s-1") == qr_before  # restored without a QR
            await eventually(
                lambda: simnet.delivered_ids("ws-1/s-1")["m-queued"] == 1,
                message="the queued message delivered",
            )
            for message_id in ("m-done", "m-queued"):
                again = await node.stub.SendMessage(
                    pb.SendMessageRequest(
                        workspace_id="ws-1",
                        session_id="s-1",
                        client_message_id=message_id,
                        to="+14155550199",
                        text="retry",
                    )
                )
                assert again.duplicate, message_id
                assert again.node_id == "node-old"
            assert not (folder / "outbox").exists()
            assert (folder / "messages.log").is_file()
        assert simnet.delivered_ids("ws-1/s-1")["m-done"] == 0  # READY before: not sent again
        assert simnet.delivered_ids("ws-1/s-1")["m-queued"] == 1
        assert simnet.replaced_events == []
