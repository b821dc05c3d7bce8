"""The session host: the gRPC service, the slot table, serving check, moves and lease fence,
the sessions with their storage, delivery and drivers."""

from node.config import NodeConfig, load_config
from node.server import NodeServer
from node.startup import start_node

__all__ = ["NodeConfig", "NodeServer", "load_config", "start_node"]
