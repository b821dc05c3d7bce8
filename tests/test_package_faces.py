"""Each product package shows a small public face, and the packages use each other only
through those faces and only along DESIGN.md's arrows."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FACES: dict[str, list[str]] = {
    "protos": [
        "ADMIN_SERVICE_NAME",
        "SESSION_SERVICE_NAME",
        "admin_pb2",
        "admin_pb2_grpc",
        "session_pb2",
        "session_pb2_grpc",
        "TOKEN_SERVICE_NAME",
        "token_pb2",
        "token_pb2_grpc",
        "WEBHOOK_ADMIN_SERVICE_NAME",
        "WEBHOOK_SERVICE_NAME",
        "webhook_pb2",
        "webhook_pb2_grpc",
    ],
    "registry": [
        "ACTIVE",
        "DEFAULT_CLUSTER",
        "DEFAULT_SLOT_COUNT",
        "DRAINING",
        "LOG_FORMATS",
        "OWNER_METADATA_KEY",
        "PUSHBACK_METADATA_KEY",
        "RETRY_AFTER_METADATA_KEY",
        "AlreadyExists",
        "Backoff",
        "CapacityExhausted",
        "ClusterKeys",
        "EtcdClient",
        "InvalidInput",
        "MembershipWatcher",
        "MeshError",
        "MessageStatus",
        "NodeRecord",
        "NodeRegistration",
        "NotFound",
        "NotOwner",
        "Owner",
        "OwnershipView",
        "QuarantineRecord",
        "Quarantined",
        "Retries",
        "Ring",
        "RingTable",
        "UndecodableRequestInterceptor",
        "Unavailable",
        "acquire_pinned",
        "acquire_slot",
        "call_safely",
        "cancel_drain",
        "catalog_counts_of",
        "catalog_of",
        "catalogued_slots",
        "clear_pin",
        "connect_etcd",
        "first_set",
        "from_rpc_error",
        "owner_address",
        "parse_endpoints",
        "parse_flags",
        "parse_host_port",
        "parse_log_format",
        "parse_log_level",
        "place_slot",
        "positive_seconds",
        "quarantine_session",
        "quarantined",
        "release_quarantine",
        "release_pinned",
        "release_slot",
        "request_drain",
        "rpc_boundary",
        "set_pin",
        "slot_of",
        "stop_task",
        "takeover_epoch",
        "DEFAULT_MAX_MESSAGE_BYTES",
        "MIN_MAX_MESSAGE_BYTES",
        "forwarding_channel_options",
        "server_options",
        "TLS_CA_VARIABLE",
        "TLS_CERT_VARIABLE",
        "TLS_KEY_VARIABLE",
        "TlsMaterial",
        "add_tls_flags",
        "load_tls",
        "tls_from_args",
        "update_catalog",
        "update_catalog_counts",
        "validate_free_text",
        "validate_id",
        "validate_labels",
        "validate_phone_number",
        "validate_recipient",
        "validate_text",
        "whole_number",
        "DEFAULT_GATEWAY_STREAMS_PER_CONNECTION",
        "DEFAULT_NODE_STREAMS_PER_CONNECTION",
        "ETCD_CACERT_VARIABLE",
        "ETCD_CERT_VARIABLE",
        "ETCD_KEY_VARIABLE",
        "EtcdTls",
        "PermissionDenied",
        "Unauthenticated",
        "add_etcd_tls_flags",
        "etcd_tls_from_args",
        "load_etcd_tls",
        "OutOfRange",
        "WrongState",
    ],
    "registry.auth": [
        "ADMIN_TOKEN_FILE_VARIABLE",
        "AUTHORIZATION_KEY",
        "AUTH_OFF",
        "AUTH_OFF_SETTINGS",
        "AUTH_TOKENS",
        "AUTH_VARIABLE",
        "MESSAGES_SEND",
        "SCOPES",
        "SESSIONS_MANAGE",
        "SESSIONS_READ",
        "SESSION_METHOD_SCOPES",
        "WEBHOOK_METHOD_SCOPES",
        "TOKENS_REQUIRED",
        "WEBHOOKS_MANAGE",
        "Access",
        "AccessControl",
        "AccessInterceptor",
        "AuthSettings",
        "IssuedToken",
        "OpenAccess",
        "TokenAccess",
        "TokenCache",
        "TokenRecord",
        "add_auth_flags",
        "admin_record_of",
        "auth_from_args",
        "bearer_metadata",
        "bearer_of",
        "bearer_text",
        "issue_token",
        "new_admin_token_text",
        "open_access",
        "parse_token",
        "read_tokens",
        "revoke_token",
        "store_token",
        "store_token_if_absent",
        "token_id_of",
        "validate_token_id",
    ],
    "registry.webhooks": [
        "ALLOW_PRIVATE_VARIABLE",
        "DEFAULT_OVERLAP_SECONDS",
        "EVENT_TYPES",
        "MAX_OVERLAP_SECONDS",
        "MESSAGE_ACCEPTED",
        "MESSAGE_DELIVERED",
        "MESSAGE_FAILED",
        "MESSAGE_READ",
        "MESSAGE_RECEIVED",
        "MESSAGE_SENT",
        "SESSION_MOVED",
        "SESSION_QR",
        "SESSION_STATE_CHANGED",
        "WEBHOOK_TEST",
        "DestinationRefused",
        "SigningSecret",
        "WebhookDirectory",
        "WebhookRecord",
        "add_webhook_flags",
        "allow_private_from_args",
        "check_destination",
        "delete_webhook",
        "is_public",
        "new_checked_record",
        "new_record",
        "new_secret",
        "parse_url",
        "put_webhook",
        "read_webhook",
        "rotate_secret",
        "validate_event_types",
        "validate_secret",
    ],
    "registry.accounts": [
        "DEFAULT_DATABASE_URL",
        "DEFAULT_MAX_PENDING_SESSIONS",
        "AccountStore",
        "MoveHistory",
        "WhatsappAccount",
        "current",
        "downgrade",
        "head_revision",
        "make_engine",
        "upgrade",
    ],
    "routing": [
        "DEFAULT_RETRY_POLICY",
        "Attempts",
        "ChannelPool",
        "NextAttempt",
        "Resolver",
        "RetryPolicy",
        "Router",
        "closed_channels_as_errors",
    ],
    "node": [
        "META_FILE",
        "WORKSPACE_FOLDER_PREFIX",
        "NodeConfig",
        "NodeServer",
        "SessionSummary",
        "load_config",
        "start_node",
        "summarize_session",
        "without_owner_epoch",
    ],
    "backup": [
        "BackupRequest",
        "BackupResult",
        "Manifest",
        "RestoreRequest",
        "RestoreResult",
        "StoredArchive",
        "Target",
        "WorkspaceCounts",
        "count_sessions",
        "fetch_archive",
        "generate_key_file",
        "parse_target",
        "prune",
        "recipients_of",
        "restore_backup",
        "take_backup",
        "verify_archive",
    ],
    "gateway": ["GatewayConfig", "GatewayServer", "load_config", "start_gateway"],
    "client": ["ProxylessClient"],
    "simnet": [
        "Delivery",
        "InboundMessage",
        "LiveInterval",
        "Pairing",
        "ProtocolError",
        "ReplacedEvent",
        "SimNet",
        "SimNetAdmin",
        "SimNetAdminError",
        "decode_line",
        "encode_line",
        "protocol",
    ],
    "telemetry": [
        "HealthServicer",
        "Hop",
        "HopTracer",
        "build_tracer_provider",
        "client_interceptors",
        "configure_logging",
        "configure_tracing",
        "new_health_servicer",
        "raise_open_file_limit",
        "rpc_attributes",
        "server_interceptors",
        "start_metrics_server",
        "with_trace_context",
    ],
}
"""Every package's ``__all__``, pinned: a change to a face is a deliberate change here."""

ARROWS: dict[str, set[str]] = {
    "protos": set(),
    "registry": set(),
    "telemetry": {"registry"},
    "routing": {"registry"},
    "simnet": {"registry", "telemetry"},
    "node": {"registry", "protos", "telemetry", "simnet"},
    "gateway": {"routing", "registry", "protos", "telemetry"},
    "client": {"routing", "registry", "protos", "telemetry", "backup"},
    "backup": {"registry", "node"},
}
"""Which packages each product package may use (DESIGN.md's arrows)."""

SUBPACKAGE_FACES = frozenset({"registry.accounts", "registry.auth", "registry.webhooks"})
"""Subpackages with a face of their own, importable by other packages."""


def _imports_of_other_packages(package: str) -> list[tuple[str, int, str, list[str]]]:
    """(file, line, module, names) of every import of another package of ours."""
    found: list[tuple[str, int, str, list[str]]] = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                top = node.module.split(".")[0]
                if (top in ARROWS and top != package) or top in ("testkit", "tests", "bench"):
                    names = [alias.name for alias in node.names]
                    found.append((str(path.relative_to(ROOT)), node.lineno, node.module, names))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    top = alias.name.split(".")[0]
                    if (top in ARROWS and top != package) or top in ("testkit", "tests", "bench"):
                        found.append((str(path.relative_to(ROOT)), node.lineno, alias.name, []))
    return found


class TestFaces:
    """Each package exports exactly its pinned names, and every one of them exists."""

    @pytest.mark.parametrize("package", sorted(FACES))
    def test_all_is_the_pinned_face(self, package: str) -> None:
        module = importlib.import_module(package)
        assert sorted(module.__all__) == sorted(FACES[package])
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert not missing, f"{package} lists names it does not define: {missing}"


class TestArrows:
    """Packages use each other only along the design's arrows, through each other's faces."""

    @pytest.mark.parametrize("package", sorted(ARROWS))
    def test_imports_follow_the_arrows_through_faces(self, package: str) -> None:
        wrong: list[str] = []
        for file, line, module, names in _imports_of_other_packages(package):
            top = module.split(".")[0]
            where = f"{file}:{line} imports {module}"
            if top not in ARROWS[package]:
                wrong.append(f"{where}: {package} may not use {top}")
                continue
            if module != top and module not in SUBPACKAGE_FACES:
                wrong.append(f"{where}: use the face ({top}), not a module inside it")
                continue
            face = set(importlib.import_module(module).__all__)
            hidden = sorted(set(names) - face)
            if hidden:
                wrong.append(f"{where}: {hidden} are not in its face")
        assert not wrong, "\n".join(wrong)

    def test_the_check_sees_imports(self) -> None:
        # The gateway forwards with routing: if this finds nothing, the scan is broken.
        modules = {module for _, _, module, _ in _imports_of_other_packages("gateway")}
        assert {"routing", "registry", "protos", "telemetry"} <= modules
