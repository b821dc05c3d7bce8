"""``sessionmesh.v1.TokenService``: create, list and revoke bearer tokens (admin only: the
gateway's access interceptor checks that before any method here runs)."""

from __future__ import annotations

import time
from typing import Any

import aetcd
import grpc
import structlog

from protos import token_pb2, token_pb2_grpc
from registry import (
    ClusterKeys,
    InvalidInput,
    NotFound,
    rpc_boundary,
    validate_id,
)
from registry.auth import (
    TokenRecord,
    issue_token,
    read_tokens,
    revoke_token,
    store_token,
    validate_token_id,
)

Context = grpc.aio.ServicerContext[Any, Any]
MAX_EXPIRES_IN_SECONDS = 10 * 365 * 86400.0

_log = structlog.get_logger(__name__)


def token_info(record: TokenRecord) -> token_pb2.TokenInfo:
    """What a record grants, without its hash."""
    return token_pb2.TokenInfo(
        token_id=record.token_id,
        workspace_id=record.workspace_id,
        scopes=list(record.scopes),
        admin=record.is_admin,
        created_at=record.created_at,
        expires_at=record.expires_at,
        name=record.name,
    )


class TokenServicer(token_pb2_grpc.TokenServiceServicer):
    """Token management on the gateway: records in etcd, the text shown once."""

    def __init__(self, *, etcd: aetcd.Client, keys: ClusterKeys) -> None:
        self._etcd = etcd
        self._keys = keys

    @rpc_boundary
    async def CreateToken(
        self, request: token_pb2.CreateTokenRequest, context: Context
    ) -> token_pb2.CreateTokenResponse:
        """A new token, its text in this answer only."""
        expires_in = request.expires_in_seconds
        if not 0 <= expires_in <= MAX_EXPIRES_IN_SECONDS:  # NaN fails both comparisons
            raise InvalidInput(
                f"expires_in_seconds must be between 0 and {MAX_EXPIRES_IN_SECONDS:.0f}"
            )
        issued = issue_token(
            workspace_id=request.workspace_id,
            scopes=request.scopes,
            is_admin=request.admin,
            expires_at=time.time() + expires_in if expires_in else 0.0,
            name=request.name,
        )
        await store_token(self._etcd, self._keys, issued.record)
        _log.info(
            "token_created",
            token_id=issued.record.token_id,
            workspace_id=issued.record.workspace_id,
            scopes=list(issued.record.scopes),
            admin=issued.record.is_admin,
        )
        return token_pb2.CreateTokenResponse(token=issued.text, info=token_info(issued.record))

    @rpc_boundary
    async def ListTokens(
        self, request: token_pb2.ListTokensRequest, context: Context
    ) -> token_pb2.ListTokensResponse:
        """The stored tokens (read from etcd), of one workspace if asked."""
        workspace_id = request.workspace_id
        if workspace_id:
            validate_id(workspace_id, field="workspace_id")
        records = await read_tokens(self._etcd, self._keys)
        return token_pb2.ListTokensResponse(
            tokens=[
                token_info(each)
                for each in records
                if not workspace_id or each.workspace_id == workspace_id
            ]
        )

    @rpc_boundary
    async def RevokeToken(
        self, request: token_pb2.RevokeTokenRequest, context: Context
    ) -> token_pb2.RevokeTokenResponse:
        """Delete a token's record; NOT_FOUND if there is none."""
        token_id = validate_token_id(request.token_id)
        record = await revoke_token(self._etcd, self._keys, token_id)
        if record is None:
            raise NotFound(f"no token {token_id}")
        _log.info("token_revoked", token_id=token_id, workspace_id=record.workspace_id)
        return token_pb2.RevokeTokenResponse(info=token_info(record))
