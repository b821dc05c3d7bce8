"""The etcd key layout of a cluster. Only this module spells out key paths.

::

    /sessionmesh/<cluster>/nodes/<node_id>        NodeRecord JSON, under the node's lease
    /sessionmesh/<cluster>/owners/<slot>          {"node_id"}, under the owner's lease
    /sessionmesh/<cluster>/pins/<workspace>       node_id, no lease
    /sessionmesh/<cluster>/pinned-owners/<ws>     like owners/, for a pinned workspace
    /sessionmesh/<cluster>/catalog/<slot>/<ws>    no lease: the workspaces a slot holds
    /sessionmesh/<cluster>/drain/<node_id>        no lease: an operator asked the node to drain
    /sessionmesh/<cluster>/quarantine/<ws>/<sid>  no lease: a session that cannot be restored
    /sessionmesh/<cluster>/tokens/<token_id>      no lease: a bearer token's record (a hash)
    /sessionmesh/<cluster>/webhooks/<workspace>   no lease: a workspace's webhook (URL, secrets)
    /sessionmesh/<cluster>/webhooks-default       no lease: the mesh-wide default webhook
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CLUSTER = "default"


@dataclass(frozen=True)
class ClusterKeys:
    """Key builders for one cluster."""

    cluster: str = DEFAULT_CLUSTER
    """Name of the cluster; several clusters can share one etcd."""

    @property
    def root(self) -> bytes:
        """Prefix of every key of this cluster."""
        return f"/sessionmesh/{self.cluster}/".encode()

    @property
    def nodes_prefix(self) -> bytes:
        """Prefix of the membership records."""
        return self.root + b"nodes/"

    def node(self, node_id: str) -> bytes:
        """Key of one node's membership record."""
        return self.nodes_prefix + node_id.encode()

    def node_id_of(self, key: bytes) -> str:
        """The node id named by a membership key."""
        return key[len(self.nodes_prefix) :].decode()

    @property
    def owners_prefix(self) -> bytes:
        """Prefix of the slot ownership keys."""
        return self.root + b"owners/"

    def owner(self, slot: int) -> bytes:
        """Key of one slot's ownership record."""
        return self.owners_prefix + str(slot).encode()

    @property
    def pins_prefix(self) -> bytes:
        """Prefix of the operators' pins."""
        return self.root + b"pins/"

    def pin(self, workspace_id: str) -> bytes:
        """Key of one workspace's pin."""
        return self.pins_prefix + workspace_id.encode()

    @property
    def pinned_owners_prefix(self) -> bytes:
        """Prefix of the ownership keys of pinned workspaces."""
        return self.root + b"pinned-owners/"

    def pinned_owner(self, workspace_id: str) -> bytes:
        """Ownership key of one pinned workspace."""
        return self.pinned_owners_prefix + workspace_id.encode()

    @property
    def catalog_root(self) -> bytes:
        """Prefix of every catalog entry."""
        return self.root + b"catalog/"

    @property
    def drain_prefix(self) -> bytes:
        """Prefix of the operators' drain requests."""
        return self.root + b"drain/"

    def drain(self, node_id: str) -> bytes:
        """Key asking one node to drain."""
        return self.drain_prefix + node_id.encode()

    @property
    def quarantine_prefix(self) -> bytes:
        """Prefix of the quarantined sessions."""
        return self.root + b"quarantine/"

    def quarantine(self, workspace_id: str, session_id: str) -> bytes:
        """Key of one quarantined session (``session_id`` empty: the whole workspace)."""
        return self.quarantine_prefix + f"{workspace_id}/{session_id}".encode()

    @property
    def tokens_prefix(self) -> bytes:
        """Prefix of the bearer tokens' records."""
        return self.root + b"tokens/"

    def token(self, token_id: str) -> bytes:
        """Key of one token's record."""
        return self.tokens_prefix + token_id.encode()

    def token_id_of(self, key: bytes) -> str:
        """The token id named by a token key."""
        return key[len(self.tokens_prefix) :].decode(errors="replace")

    @property
    def webhook_records_prefix(self) -> bytes:
        """Prefix of every webhook record: the workspaces' and the default one."""
        return self.root + b"webhooks"

    @property
    def webhooks_prefix(self) -> bytes:
        """Prefix of the workspaces' webhooks."""
        return self.root + b"webhooks/"

    def webhook(self, workspace_id: str) -> bytes:
        """Key of one workspace's webhook."""
        return self.webhooks_prefix + workspace_id.encode()

    @property
    def default_webhook(self) -> bytes:
        """Key of the mesh-wide default webhook."""
        return self.root + b"webhooks-default"

    def webhook_workspace_of(self, key: bytes) -> str | None:
        """The workspace a webhook key names; "" for the default one; None for another key."""
        if key == self.default_webhook:
            return ""
        if key.startswith(self.webhooks_prefix):
            return key[len(self.webhooks_prefix) :].decode(errors="replace")
        return None

    def catalog(self, slot: int, workspace_id: str) -> bytes:
        """Key recording that ``slot`` holds ``workspace_id``."""
        return self.root + f"catalog/{slot}/{workspace_id}".encode()

    def catalog_slot_of(self, key: bytes) -> int | None:
        """The slot of a :meth:`catalog` key, or None for any other key."""
        root = self.catalog_root
        if not key.startswith(root):
            return None
        slot_text, separator, workspace = key[len(root) :].partition(b"/")
        if not (slot_text.isdigit() and separator and workspace):
            return None
        slot = int(slot_text)
        return slot if self.catalog(slot, workspace.decode(errors="replace")) == key else None

    def catalog_prefix(self, slot: int) -> bytes:
        """Prefix of the workspaces one slot holds."""
        return self.root + f"catalog/{slot}/".encode()
