"""The gateway: a stateless gRPC forwarder that routes each call by its workspace."""

from gateway.config import GatewayConfig, load_config
from gateway.server import GatewayServer, start_gateway

__all__ = ["GatewayConfig", "GatewayServer", "load_config", "start_gateway"]
