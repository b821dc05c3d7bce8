"""The ``meshctl`` app and what its commands share: the gateway and ``--json`` options, one
call to the ``AdminService`` per command (a failed call exits 1 with its status), output."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, NoReturn, TypeVar

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console

from client.bearer import bearer_interceptors
from protos import admin_pb2_grpc, token_pb2_grpc
from registry import (
    TLS_CA_VARIABLE,
    TLS_CERT_VARIABLE,
    TLS_KEY_VARIABLE,
    InvalidInput,
    TlsMaterial,
    load_tls,
    parse_host_port,
)

DEFAULT_GATEWAY = "127.0.0.1:7000"

_T = TypeVar("_T")
_Stub = TypeVar("_Stub")
AdminCall = Callable[[admin_pb2_grpc.AdminServiceStub], Awaitable[_T]]
TokenCall = Callable[[token_pb2_grpc.TokenServiceStub], Awaitable[_T]]
TOKEN_VARIABLE = "MESHCTL_TOKEN"

app = typer.Typer(
    help="Operate a sessionmesh cluster through its gateway's AdminService.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (scripts, CI logs) gets room for whole rows instead of an 80-column guess.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


_tls: list[TlsMaterial] = []
"""The TLS material of this invocation, once ``--tls-*`` were read (empty: plaintext)."""
_token: list[str] = []
"""The bearer token of this invocation (``--token``), if one was given."""


@app.callback()
def _options(
    tls_cert: Annotated[
        str, typer.Option("--tls-cert", envvar=TLS_CERT_VARIABLE, help="Client certificate (PEM).")
    ] = "",
    tls_key: Annotated[
        str, typer.Option("--tls-key", envvar=TLS_KEY_VARIABLE, help="Its private key (PEM).")
    ] = "",
    tls_ca: Annotated[
        str, typer.Option("--tls-ca", envvar=TLS_CA_VARIABLE, help="The mesh CA (PEM).")
    ] = "",
    token: Annotated[
        str,
        typer.Option(
            "--token",
            envvar=TOKEN_VARIABLE,
            help="The admin token (the gateway refuses admin calls without one).",
            show_default=False,
        ),
    ] = "",
) -> None:
    """Options for every command: TLS to a gateway that serves it (all three, or none), and
    the admin token."""
    _token.clear()
    if token.strip():
        _token.append(token.strip())
    try:
        material = load_tls(tls_cert, tls_key, tls_ca)
    except InvalidInput as error:
        raise typer.BadParameter(error.message) from None
    _tls.clear()
    if material is not None:
        _tls.append(material)


def has_token() -> bool:
    """Whether this invocation was given a bearer token."""
    return bool(_token)


def gateway_channel(gateway: str) -> grpc.aio.Channel:
    """A new channel to ``gateway`` with this invocation's TLS material and token (open it
    with ``async with``)."""
    interceptors = bearer_interceptors(_token[0]) if _token else []
    if not _tls:
        return grpc.aio.insecure_channel(gateway, interceptors=interceptors)
    return grpc.aio.secure_channel(
        gateway, _tls[0].channel_credentials(), interceptors=interceptors
    )


def _gateway_address(value: str) -> str:
    try:
        parse_host_port(value, field="--gateway", allow_port_zero=False)
    except InvalidInput:
        raise typer.BadParameter(f"{value!r} is not HOST:PORT") from None
    return value


GatewayOption = Annotated[
    str,
    typer.Option(
        "--gateway",
        envvar="MESHCTL_GATEWAY",
        callback=_gateway_address,
        help="The gateway's HOST:PORT.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document instead.")]
WaitTimeoutOption = Annotated[
    float, typer.Option("--timeout-seconds", min=0.1, help="Give up --wait after this long.")
]


def fail(message: str) -> NoReturn:
    """Print ``message`` as an error and exit 1."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def run_call(gateway: str, call: AdminCall[_T]) -> _T:
    """Run ``call`` with an ``AdminService`` stub on a fresh channel; a failed RPC ends the
    CLI with exit 1."""
    return run_stub_call(gateway, admin_pb2_grpc.AdminServiceStub, call)


def run_token_call(gateway: str, call: TokenCall[_T]) -> _T:
    """Like :func:`run_call`, with a ``TokenService`` stub."""
    return run_stub_call(gateway, token_pb2_grpc.TokenServiceStub, call)


def run_stub_call(
    gateway: str,
    stub_type: Callable[[grpc.aio.Channel], _Stub],
    call: Callable[[_Stub], Awaitable[_T]],
) -> _T:
    """Like :func:`run_call`, with a stub of ``stub_type`` (any service the gateway serves or
    forwards)."""

    async def run() -> _T:
        async with gateway_channel(gateway) as channel:
            return await call(stub_type(channel))

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as error:
        hint = ""
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            hint = f" (is the gateway at {gateway}?)"
        elif error.code() == grpc.StatusCode.UNAUTHENTICATED and not _token:
            hint = f" (give the admin token: --token or {TOKEN_VARIABLE})"
        fail(f"{error.code().name}: {error.details()}{hint}")
    except TimeoutError as error:
        fail(str(error) or "timed out")


def as_dict(message: Message) -> dict[str, Any]:
    """``message`` as JSON-ready data (proto field names, defaults shown)."""
    return MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def print_json(message: Message) -> None:
    """Print ``message`` as one JSON document."""
    sys.stdout.write(json.dumps(as_dict(message), indent=2, sort_keys=True) + "\n")


def percent(share: float) -> str:
    """``0.125`` → ``12.5%``."""
    return f"{share * 100:.1f}%"


def session_count_text(count: int) -> str:
    """A session count, ``?`` when unknown (negative)."""
    return "?" if count < 0 else str(count)
