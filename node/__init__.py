"""The session host: the gRPC service, the slot table, serving check, moves and lease fence,
the sessions with their storage, delivery and drivers."""

from node.config import NodeConfig, load_config
from node.server import NodeServer
from node.startup import start_node
from node.stored_sessions import (
    META_FILE,
    WORKSPACE_FOLDER_PREFIX,
    SessionSummary,
    summarize_session,
    without_owner_epoch,
)

__all__ = [
    "META_FILE",
    "WORKSPACE_FOLDER_PREFIX",
    "NodeConfig",
    "NodeServer",
    "SessionSummary",
    "load_config",
    "start_node",
    "summarize_session",
    "without_owner_epoch",
]
