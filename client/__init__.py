"""Clients of a sessionmesh cluster: :class:`ProxylessClient`, which calls the owning nodes
directly, and ``client.meshctl``, the operator CLI (``meshctl``).

The CLI is not imported here on purpose: importing it from the package would make
``python -m client.meshctl`` load it twice.
"""

from client.proxyless import ProxylessClient

__all__ = ["ProxylessClient"]
