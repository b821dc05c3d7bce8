"""The sessionmesh.v1 API: generated messages and stubs, re-exported.

Regenerate with ``make protos``; ``tests/test_protos_fresh.py`` fails when the
committed stubs differ from what the .proto files generate.
"""

from protos.sessionmesh.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
    token_pb2,
    token_pb2_grpc,
    webhook_pb2,
    webhook_pb2_grpc,
)

SESSION_SERVICE_NAME = session_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name
ADMIN_SERVICE_NAME = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
TOKEN_SERVICE_NAME = token_pb2.DESCRIPTOR.services_by_name["TokenService"].full_name
WEBHOOK_SERVICE_NAME = webhook_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name
WEBHOOK_ADMIN_SERVICE_NAME = webhook_pb2.DESCRIPTOR.services_by_name[
    "WebhookAdminService"
].full_name

__all__ = [
    "ADMIN_SERVICE_NAME",
    "SESSION_SERVICE_NAME",
    "TOKEN_SERVICE_NAME",
    "WEBHOOK_ADMIN_SERVICE_NAME",
    "WEBHOOK_SERVICE_NAME",
    "admin_pb2",
    "admin_pb2_grpc",
    "session_pb2",
    "session_pb2_grpc",
    "token_pb2",
    "token_pb2_grpc",
    "webhook_pb2",
    "webhook_pb2_grpc",
]
