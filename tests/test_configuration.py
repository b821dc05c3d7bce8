"""Every process takes flags, falling back to environment variables, then defaults (a
contract with operators); a bad value exits with code 2 naming the flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import GatewayConfig
from gateway import load_config as load_gateway_config
from node import load_config as load_node_config


class TestGateway:
    """The gateway's configuration comes from flags over environment over defaults."""

    def test_no_flags_and_no_environment_give_the_defaults(self) -> None:
        assert load_gateway_config([], environ={}) == GatewayConfig()

    def test_the_environment_is_read_and_flags_win(self) -> None:
        environ = {
            "GATEWAY_LISTEN": "0.0.0.0:7100",
            "ETCD_ENDPOINTS": "http://10.0.0.1:2379",
            "SESSIONMESH_CLUSTER": "prod",
            "METRICS_LISTEN": "127.0.0.1:9100",
            "LOG_LEVEL": "debug",
        }
        config = load_gateway_config(
            ["--cluster", "staging", "--listen", "127.0.0.1:0"], environ=environ
        )
        assert config == GatewayConfig(
            listen_address="127.0.0.1:0",
            etcd_endpoints="http://10.0.0.1:2379",
            cluster="staging",
            metrics_listen="127.0.0.1:9100",
            log_level="DEBUG",
        )

    @pytest.mark.parametrize(
        ("argv", "named"),
        [
            (["--listen", "nowhere"], "--listen"),
            (["--metrics-listen", "1.2.3.4:99999"], "--metrics-listen"),
            (["--etcd", "https://10.0.0.1:2379"], "give --etcd-cacert"),
            (["--etcd", "ftp://10.0.0.1:2379"], "expected http:// or https://"),
            (["--auth", "maybe"], "--auth"),
            (["--admin-token-file", "/nonexistent/token"], "--admin-token-file"),
            (["--max-streams-per-connection", "0"], "--max-streams-per-connection"),
            (["--cluster", "a/b"], "--cluster"),
            (["--log-level", "LOUD"], "--log-level"),
        ],
    )
    def test_a_bad_value_exits_2_naming_it(
        self, argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as raised:
            load_gateway_config(argv, environ={})
        assert raised.value.code == 2
        assert named in capsys.readouterr().err


class TestNode:
    """The node's configuration: flags win over the environment; bad values exit with code 2."""

    def test_the_environment_is_read_and_flags_win(self) -> None:
        environ = {
            "INSTANCE_ID": "from-instance",
            "NODE_LISTEN": "127.0.0.1:0",
            "ETCD_ENDPOINTS": "http://127.0.0.1:1,127.0.0.1:2",
            "SESSIONMESH_CLUSTER": "blue",
            "SESSION_STORAGE_PATH": "/srv/sessions",
            "MAX_SESSIONS_PER_INSTANCE": "7",
            "DATABASE_URL": "",
            "SIMNET_ADDR": "127.0.0.1:9",
            "METRICS_LISTEN": "127.0.0.1:0",
            "LEASE_TTL_SECONDS": "3",
            "NODE_ZONE": "eu-1a",
            "RESTORE_CONCURRENCY": "4",
            "LOG_LEVEL": "debug",
        }
        config = load_node_config([], environ=environ)
        assert (config.node_id, config.cluster, config.max_sessions) == ("from-instance", "blue", 7)
        assert config.database_url == "" and config.zone == "eu-1a"
        assert (config.lease_ttl_seconds, config.restore_concurrency) == (3, 4)
        assert config.storage_path == Path("/srv/sessions") and config.log_level == "DEBUG"
        flagged = load_node_config(
            ["--node-id", "n-2", "--max-sessions", "9", "--advertise", "10.0.0.1:7001"],
            environ={**environ, "NODE_ID": "from-node-id"},
        )
        assert (flagged.node_id, flagged.max_sessions) == ("n-2", 9)
        assert flagged.advertise_address == "10.0.0.1:7001"
        assert load_node_config([], environ={}).listen_address == "127.0.0.1:7001"

    @pytest.mark.parametrize(
        ("flags", "named"),
        [
            (["--listen", "no-port"], "--listen"),
            (["--listen", "127.0.0.1:65536"], "--listen"),
            (["--max-sessions", "0"], "--max-sessions"),
            (["--max-sessions", "many"], "--max-sessions"),
            (["--node-id", "../x"], "--node-id"),
            (["--lease-ttl-seconds", "1"], "--lease-ttl-seconds"),
            (["--etcd", "https://127.0.0.1:2379"], "etcd endpoint"),
        ],
    )
    def test_a_bad_value_exits_2_naming_it(
        self, flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as exited:
            load_node_config(flags, environ={})
        assert exited.value.code == 2
        assert named in capsys.readouterr().err
