"""``python -m deploy.grafana.dashboards --out deploy/grafana/dashboards/``: the Grafana
dashboards of a sessionmesh cluster, as code (grafana-foundation-sdk), written as JSON.

Four dashboards, each over a Prometheus data source picked by the ``datasource`` variable and
the ``cluster`` variable (the label ``meshctl prometheus-targets`` gives every target):

- ``sessionmesh-fleet.json``: the whole fleet at a glance;
- ``sessionmesh-nodes.json``: sessions and utilisation per node, and what loads a node;
- ``sessionmesh-rpc-latency.json``: p50/p95/p99 of calls, at the gateway and on the nodes;
- ``sessionmesh-moves.json``: handoffs, acquisitions, failovers and fences over time.

The JSON is committed; ``tests/test_dashboards.py`` checks it is what this module writes and
that every metric a panel names is exported by a running node or gateway.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dashboard_models

DATASOURCE = dashboard_models.DataSourceRef(type_val="prometheus", uid="${datasource}")
CLUSTER = 'cluster=~"$cluster"'
"""The label matcher every query carries (``.*`` under "All" matches a missing label too)."""
NODES = f'{CLUSTER}, node_id=~"$node"'
PROCESSES = f'job=~"sessionmesh.*", {CLUSTER}'
"""The default collector's ``process_*`` series carry no mesh label: select them by job."""
RATE_WINDOW = "$__rate_interval"
SERVER_ERROR_CODES = "UNKNOWN|INTERNAL|UNAVAILABLE|DATA_LOSS|DEADLINE_EXCEEDED"
"""The codes the alerts count as errors (deploy/prometheus/alerts.yml)."""
QUANTILES = (0.5, 0.95, 0.99)
FULL_WIDTH = 24
HALF_WIDTH = 12
STAT_WIDTH = 4
STAT_HEIGHT = 4
GRAPH_HEIGHT = 8

Query = tuple[str, str]
"""A PromQL expression and its legend."""


def _target(expr: str, legend: str, ref_id: str) -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .ref_id(ref_id)
        .datasource(DATASOURCE)
        .range()
    )


def _ref_id(index: int) -> str:
    return chr(ord("A") + index)


def graph(
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    unit: str = "short",
    width: int = HALF_WIDTH,
    stacked: bool = False,
) -> timeseries.Panel:
    """A time series panel of ``queries``."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .span(width)
        .height(GRAPH_HEIGHT)
        .fill_opacity(10)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    if stacked:
        panel = panel.stacking(
            common_builders.StackingConfig().mode(common.StackingMode.NORMAL)
        ).fill_opacity(40)
    for index, (expr, legend) in enumerate(queries):
        panel = panel.with_target(_target(expr, legend, _ref_id(index)))
    return panel


def single_value(title: str, description: str, expr: str, *, unit: str = "short") -> stat.Panel:
    """A stat panel: the last value of ``expr``."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(STAT_WIDTH)
        .height(STAT_HEIGHT)
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .with_target(_target(expr, title, "A"))
    )


def _variables(*, with_node: bool) -> list[dashboard_builders.QueryVariable]:
    cluster = (
        dashboard_builders.QueryVariable("cluster")
        .label("cluster")
        .datasource(DATASOURCE)
        .query("label_values(sessionmesh_node_capacity_sessions, cluster)")
        .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
        .include_all(True)
        .all_value(".*")
    )
    if not with_node:
        return [cluster]
    node = (
        dashboard_builders.QueryVariable("node")
        .label("node")
        .datasource(DATASOURCE)
        .query('label_values(sessionmesh_node_capacity_sessions{cluster=~"$cluster"}, node_id)')
        .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
        .include_all(True)
        .multi(True)
        .all_value(".*")
    )
    return [cluster, node]


def _dashboard(
    uid: str, title: str, description: str, *, with_node: bool = False
) -> dashboard_builders.Dashboard:
    builder = (
        dashboard_builders.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["sessionmesh"])
        .editable()
        .timezone("browser")
        .time("now-6h", "now")
        .refresh("30s")
        .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
        .with_variable(
            dashboard_builders.DatasourceVariable("datasource")
            .label("data source")
            .type("prometheus")
        )
        .link(
            dashboard_builders.DashboardLink("sessionmesh")
            .type(dashboard_models.DashboardLinkType.DASHBOARDS)
            .tags(["sessionmesh"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )
    for variable in _variables(with_node=with_node):
        builder = builder.with_variable(variable)
    return builder


def fleet_overview() -> dashboard_builders.Dashboard:
    """The whole fleet: members up, sessions, utilisation, calls and errors, CPU and memory."""
    fleet_utilisation = (
        f"sum(sessionmesh_node_utilisation_ratio{{{CLUSTER}}}"
        f" * sessionmesh_node_capacity_sessions{{{CLUSTER}}})"
        f" / sum(sessionmesh_node_capacity_sessions{{{CLUSTER}}})"
    )
    calls = f"sessionmesh_gateway_forwarded_calls_total{{{CLUSTER}}}"
    errors = f'sessionmesh_gateway_forwarded_calls_total{{{CLUSTER}, code=~"{SERVER_ERROR_CODES}"}}'
    return (
        _dashboard(
            "sessionmesh-fleet",
            "sessionmesh / fleet overview",
            "Every node and gateway of the cluster: who is up, how full the fleet is, "
            "how calls fare.",
        )
        .with_row(dashboard_builders.Row("now"))
        .with_panel(
            single_value(
                "nodes up",
                "Node targets Prometheus scrapes successfully (role=node).",
                f'sum(up{{{PROCESSES}, role="node"}})',
            )
        )
        .with_panel(
            single_value(
                "gateways up",
                "Gateway targets Prometheus scrapes successfully (role=gateway).",
                f'sum(up{{{PROCESSES}, role="gateway"}})',
            )
        )
        .with_panel(
            single_value(
                "sessions",
                "Sessions hosted by every node, in any state.",
                f"sum(sessionmesh_node_sessions{{{CLUSTER}}})",
            )
        )
        .with_panel(
            single_value(
                "fleet utilisation",
                "Hosted sessions over the summed MAX_SESSIONS_PER_INSTANCE of every node.",
                fleet_utilisation,
                unit="percentunit",
            )
        )
        .with_panel(
            single_value(
                "calls / s",
                "Calls the gateways answered per second.",
                f"sum(rate({calls}[{RATE_WINDOW}]))",
                unit="reqps",
            )
        )
        .with_panel(
            single_value(
                "server errors",
                "Share of the gateways' calls that ended in a server-side error "
                "(the SessionmeshHighErrorRatio alert fires past 5 %).",
                f"sum(rate({errors}[{RATE_WINDOW}])) / sum(rate({calls}[{RATE_WINDOW}]))",
                unit="percentunit",
            )
        )
        .with_row(dashboard_builders.Row("sessions and capacity"))
        .with_panel(
            graph(
                "sessions by state",
                "Sessions hosted by the fleet, by state (READY, QR_PENDING, …).",
                [(f"sum by (state) (sessionmesh_node_sessions{{{CLUSTER}}})", "{{state}}")],
                stacked=True,
            )
        )
        .with_panel(
            graph(
                "utilisation by node",
                "Hosted sessions over MAX_SESSIONS_PER_INSTANCE, per node "
                "(SessionmeshNodeNearCapacity fires past 90 %).",
                [
                    (f"sessionmesh_node_utilisation_ratio{{{CLUSTER}}}", "{{node_id}}"),
                    (fleet_utilisation, "fleet"),
                ],
                unit="percentunit",
            )
        )
        .with_row(dashboard_builders.Row("calls"))
        .with_panel(
            graph(
                "calls by status code",
                "Calls the gateways answered per second, by final status code.",
                [(f"sum by (code) (rate({calls}[{RATE_WINDOW}]))", "{{code}}")],
                unit="reqps",
            )
        )
        .with_panel(
            graph(
                "retries and reroutes",
                "Calls the gateways sent again: after UNAVAILABLE (handoffs, failovers), and "
                "to the owner a node named.",
                [
                    (
                        f"sum(rate(sessionmesh_gateway_retries_total{{{CLUSTER}}}[{RATE_WINDOW}]))",
                        "retries",
                    ),
                    (
                        f"sum(rate(sessionmesh_gateway_reroutes_total{{{CLUSTER}}}[{RATE_WINDOW}]))",
                        "reroutes",
                    ),
                ],
                unit="reqps",
            )
        )
        .with_row(dashboard_builders.Row("processes"))
        .with_panel(
            graph(
                "CPU by process",
                "CPU cores each process uses (SessionmeshHighCpu fires past 0.8 for 10 min).",
                [
                    (
                        f"rate(process_cpu_seconds_total{{{PROCESSES}}}[{RATE_WINDOW}])",
                        "{{member}}",
                    )
                ],
                unit="percentunit",
            )
        )
        .with_panel(
            graph(
                "memory by process",
                "Resident memory over the process's limit (its cgroup's, else the machine's; "
                "SessionmeshHighMemory fires past 85 % for 5 min).",
                [
                    (
                        f"process_resident_memory_bytes{{{PROCESSES}}}"
                        f" / sessionmesh_process_memory_limit_bytes{{{PROCESSES}}}",
                        "{{member}}",
                    )
                ],
                unit="percentunit",
            )
        )
        .with_panel(
            graph(
                "members up",
                "1 while Prometheus scrapes a member, 0 while it cannot "
                "(SessionmeshInstanceDown fires after 2 min).",
                [(f"up{{{PROCESSES}}}", "{{role}} {{member}}")],
                width=FULL_WIDTH,
            )
        )
    )


def node_detail() -> dashboard_builders.Dashboard:
    """One row of facts per node: sessions, utilisation, work in flight, lag, refusals."""
    return (
        _dashboard(
            "sessionmesh-nodes",
            "sessionmesh / nodes",
            "Sessions and utilisation per node, and what loads a node.",
            with_node=True,
        )
        .with_row(dashboard_builders.Row("sessions"))
        .with_panel(
            graph(
                "sessions by node and state",
                "Sessions each node hosts, by state.",
                [
                    (
                        f"sum by (node_id, state) (sessionmesh_node_sessions{{{NODES}}})",
                        "{{node_id}} {{state}}",
                    )
                ],
            )
        )
        .with_panel(
            graph(
                "utilisation",
                "Hosted sessions over MAX_SESSIONS_PER_INSTANCE.",
                [(f"sessionmesh_node_utilisation_ratio{{{NODES}}}", "{{node_id}}")],
                unit="percentunit",
            )
        )
        .with_panel(
            graph(
                "capacity and owned slots",
                "MAX_SESSIONS_PER_INSTANCE and the slots each node owns now.",
                [
                    (f"sessionmesh_node_capacity_sessions{{{NODES}}}", "{{node_id}} capacity"),
                    (f"sessionmesh_node_owned_slots{{{NODES}}}", "{{node_id}} owned slots"),
                ],
            )
        )
        .with_panel(
            graph(
                "messages accepted and sessions restored",
                "Messages written to an outbox, and sessions started again from storage, "
                "per second.",
                [
                    (
                        f"rate(sessionmesh_node_messages_accepted_total{{{NODES}}}[{RATE_WINDOW}])",
                        "{{node_id}} messages",
                    ),
                    (
                        f"rate(sessionmesh_node_sessions_restored_total{{{NODES}}}[{RATE_WINDOW}])",
                        "{{node_id}} restored",
                    ),
                ],
                unit="ops",
            )
        )
        .with_row(dashboard_builders.Row("load"))
        .with_panel(
            graph(
                "work in flight",
                "Calls, restores and handoffs running now (bounded by --max-in-flight).",
                [(f"sessionmesh_node_work_in_flight{{{NODES}}}", "{{node_id}}")],
            )
        )
        .with_panel(
            graph(
                "calls shed and refused",
                "Calls refused with RESOURCE_EXHAUSTED: at the in-flight limit, and by a "
                "per-session limit.",
                [
                    (
                        f"rate(sessionmesh_node_calls_shed_total{{{NODES}}}[{RATE_WINDOW}])",
                        "{{node_id}} shed",
                    ),
                    (
                        f"sum by (node_id, limit) "
                        f"(rate(sessionmesh_node_refused_total{{{NODES}}}[{RATE_WINDOW}]))",
                        "{{node_id}} {{limit}}",
                    ),
                ],
                unit="reqps",
            )
        )
        .with_panel(
            graph(
                "event-loop lag",
                "How late the node's event loop runs its 0.25 s timer: last tick and p99 "
                "(SessionmeshEventLoopLag fires past 0.5 s for 5 min).",
                [
                    (f"sessionmesh_node_loop_lag_seconds{{{NODES}}}", "{{node_id}} last"),
                    (
                        "histogram_quantile(0.99, sum by (node_id, le) (rate("
                        f"sessionmesh_node_loop_lag_distribution_seconds_bucket{{{NODES}}}"
                        f"[{RATE_WINDOW}])))",
                        "{{node_id}} p99",
                    ),
                ],
                unit="s",
            )
        )
        .with_panel(
            graph(
                "lease and etcd",
                "Seconds since etcd confirmed the node's lease (it fences itself past 60 % of "
                "the TTL), and whether etcd confirms it in time (1).",
                [
                    (f"sessionmesh_node_lease_age_seconds{{{NODES}}}", "{{node_id}} lease age"),
                    (f"sessionmesh_node_etcd_up{{{NODES}}}", "{{node_id}} etcd up"),
                ],
            )
        )
        .with_panel(
            graph(
                "accounts DB",
                "Whether the accounts DB answers (1) and the sessions whose changes wait for it.",
                [
                    (f"sessionmesh_node_accounts_db_up{{{NODES}}}", "{{node_id}} up"),
                    (
                        f"sessionmesh_node_accounts_pending_sessions{{{NODES}}}",
                        "{{node_id}} pending",
                    ),
                ],
            )
        )
        .with_row(dashboard_builders.Row("webhooks"))
        .with_panel(
            graph(
                "webhook deliveries",
                "Events settled by webhook delivery, per second, by outcome.",
                [
                    (
                        "sum by (node_id, outcome) (rate("
                        f"sessionmesh_node_webhook_deliveries_total{{{NODES}}}[{RATE_WINDOW}]))",
                        "{{node_id}} {{outcome}}",
                    )
                ],
                unit="ops",
            )
        )
        .with_panel(
            graph(
                "oldest undelivered event",
                "Age of the oldest event each node still tries to deliver.",
                [
                    (
                        f"sessionmesh_node_webhook_oldest_undelivered_age_seconds{{{NODES}}}",
                        "{{node_id}}",
                    )
                ],
                unit="s",
            )
        )
    )


def _quantile_queries(metric: str, matchers: str, by: str) -> list[Query]:
    legend = " ".join(f"{{{{{label}}}}}" for label in by.split(", "))
    return [
        (
            f"histogram_quantile({quantile}, sum by ({by}, le) "
            f"(rate({metric}_bucket{{{matchers}}}[{RATE_WINDOW}])))",
            f"{legend} p{round(quantile * 100)}",
        )
        for quantile in QUANTILES
    ]


def rpc_latency() -> dashboard_builders.Dashboard:
    """Call latency p50/p95/p99: what callers see at the gateway, and each node's share."""
    gateway = "sessionmesh_gateway_forward_latency_seconds"
    node = "sessionmesh_node_rpc_duration_seconds"
    return (
        _dashboard(
            "sessionmesh-rpc-latency",
            "sessionmesh / RPC latency",
            "p50, p95 and p99 of calls: at the gateway (what callers see, retries included) "
            "and on the nodes.",
            with_node=True,
        )
        .with_row(dashboard_builders.Row("gateway"))
        .with_panel(
            graph(
                "gateway latency, all calls",
                "From receiving a call to its final status (streams: until set up).",
                _quantile_queries(gateway, CLUSTER, "cluster"),
                unit="s",
                width=FULL_WIDTH,
            )
        )
        .with_panel(
            graph(
                "gateway p99 by method",
                "The 99th percentile per method.",
                [
                    (
                        "histogram_quantile(0.99, sum by (method, le) "
                        f"(rate({gateway}_bucket{{{CLUSTER}}}[{RATE_WINDOW}])))",
                        "{{method}}",
                    )
                ],
                unit="s",
            )
        )
        .with_panel(
            graph(
                "gateway calls by method",
                "Calls per second per method.",
                [
                    (
                        f"sum by (method) (rate({gateway}_count{{{CLUSTER}}}[{RATE_WINDOW}]))",
                        "{{method}}",
                    )
                ],
                unit="reqps",
            )
        )
        .with_row(dashboard_builders.Row("nodes"))
        .with_panel(
            graph(
                "node latency by node",
                "Time to answer a SessionService call on each node, all methods.",
                _quantile_queries(node, NODES, "node_id"),
                unit="s",
                width=FULL_WIDTH,
            )
        )
        .with_panel(
            graph(
                "node p99 by method",
                "The 99th percentile per method, over the selected nodes.",
                [
                    (
                        "histogram_quantile(0.99, sum by (method, le) "
                        f"(rate({node}_bucket{{{NODES}}}[{RATE_WINDOW}])))",
                        "{{method}}",
                    )
                ],
                unit="s",
            )
        )
        .with_panel(
            graph(
                "node calls by status code",
                "Calls per second the selected nodes answered, by status code.",
                [
                    (
                        f"sum by (code) (rate({node}_count{{{NODES}}}[{RATE_WINDOW}]))",
                        "{{code}}",
                    )
                ],
                unit="reqps",
            )
        )
    )


def ownership_moves() -> dashboard_builders.Dashboard:
    """Slots moving: handoffs, acquisitions, failovers and fences over time."""

    def moves(metric: str) -> Query:
        return (
            f"sum by (node_id) (increase({metric}{{{NODES}}}[$__interval]))",
            "{{node_id}}",
        )

    return (
        _dashboard(
            "sessionmesh-moves",
            "sessionmesh / handoffs, failovers and fences",
            "Slots moving between nodes over time: planned (handoffs), after a death "
            "(failovers), and nodes stepping aside (fences).",
            with_node=True,
        )
        .with_panel(
            graph(
                "handoffs",
                "Slots or pinned workspaces each node handed off (joins, drains, migrations).",
                [moves("sessionmesh_node_handoffs_total")],
                stacked=True,
            )
        )
        .with_panel(
            graph(
                "acquisitions",
                "Slots or pinned workspaces each node acquired.",
                [moves("sessionmesh_node_acquisitions_total")],
                stacked=True,
            )
        )
        .with_panel(
            graph(
                "failovers",
                "Slots each node took over from a node no longer alive (SessionmeshFailover).",
                [moves("sessionmesh_node_failovers_total")],
                stacked=True,
            )
        )
        .with_panel(
            graph(
                "fences",
                "Times a node stopped its sessions after losing its lease, a key or an epoch "
                "check (SessionmeshNodeFenced).",
                [moves("sessionmesh_node_fencing_events_total")],
                stacked=True,
            )
        )
        .with_panel(
            graph(
                "owned slots",
                "Slots each node owns: moves shift these.",
                [(f"sessionmesh_node_owned_slots{{{NODES}}}", "{{node_id}}")],
                width=FULL_WIDTH,
            )
        )
    )


DASHBOARDS: dict[str, Callable[[], dashboard_builders.Dashboard]] = {
    "sessionmesh-fleet.json": fleet_overview,
    "sessionmesh-nodes.json": node_detail,
    "sessionmesh-rpc-latency.json": rpc_latency,
    "sessionmesh-moves.json": ownership_moves,
}
"""File name → the dashboard written to it."""


def render(builder: dashboard_builders.Dashboard) -> str:
    """The dashboard as Grafana's JSON model, its panels numbered in order."""
    model = builder.build()
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def rendered() -> dict[str, str]:
    """Every dashboard's JSON, by file name."""
    return {name: render(build()) for name, build in DASHBOARDS.items()}


def write_all(folder: Path) -> list[Path]:
    """Write every dashboard into ``folder``; the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered().items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: write the dashboards to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "dashboards",
        help="the folder to write the JSON files into (default: deploy/grafana/dashboards)",
    )
    args = parser.parse_args(argv)
    for path in write_all(args.out):
        sys.stdout.write(f"wrote {path}\n")


if __name__ == "__main__":
    main()
