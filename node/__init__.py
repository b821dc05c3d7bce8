"""The session host: shared storage, hosted sessions, their manager and the gRPC service."""

from node.config import NodeConfig, load_config
from node.server import NodeServer, start_node

__all__ = ["NodeConfig", "NodeServer", "load_config", "start_node"]
