"""ListSessions answers a workspace's sessions in session_id order, a page at a time."""

from __future__ import annotations

from protos import session_pb2 as pb
from testkit import RunningNode
from tests.calls import create


class TestPaging:
    """Five sessions, pages of two: three pages, in order, and only that workspace's."""

    async def test_pages_follow_session_id_order_and_end_without_a_token(
        self, node: RunningNode
    ) -> None:
        for sid in ["s-5", "s-2", "s-4", "s-1", "s-3"]:
            await create(node.stub, "ws-1", sid)
        await create(node.stub, "ws-2", "s-0")
        seen: list[list[str]] = []
        token = ""
        while True:
            page = await node.stub.ListSessions(
                pb.ListSessionsRequest(workspace_id="ws-1", page_size=2, page_token=token)
            )
            seen.append([session.session_id for session in page.sessions])
            token = page.next_page_token
            if not token:
                break
        assert seen == [["s-1", "s-2"], ["s-3", "s-4"], ["s-5"]]
        everything = await node.stub.ListSessions(pb.ListSessionsRequest(workspace_id="ws-1"))
        assert len(everything.sessions) == 5 and not everything.next_page_token
