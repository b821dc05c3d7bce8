"""sessionmesh's test kit: real etcd, a real S3 store (SeaweedFS), meshes of real processes or
in one event loop, workloads, an ownership monitor, and the ground-truth checks against
simnet's record.

Used by the tests, the benchmark (``bench/``) and ``make up`` (``deploy/local_mesh.py``), in
the spirit of ``temporalio.testing``. It runs from the checkout and is not part of the
installed package; product packages never import it.
"""

from testkit.checklist import ChecklistReport, ChecklistSizes, one_at_a_time, run_checklist
from testkit.etcd import EtcdProcess, EtcdServerTls, etcd_binary, etcd_in
from testkit.etcd_cluster import EtcdCluster
from testkit.ground_truth import (
    assert_exactly_once,
    assert_never_two_live,
    undelivered,
    wait_all_delivered,
)
from testkit.inprocess_mesh import (
    InProcessMesh,
    RunningNode,
    routed_nodes,
    running_inprocess_mesh,
    running_node,
    running_simnet,
)
from testkit.ownership_monitor import (
    OwnerSample,
    OwnershipMonitor,
    ring_placement,
    start_sessions,
    wait_owners_follow_ring,
)
from testkit.ports import HOST, free_port
from testkit.process_mesh import MeshSettings, ProcessMesh, running_process_mesh
from testkit.seaweedfs import SeaweedFs, running_seaweedfs, weed_binary
from testkit.sizes import ChaosSizes, chaos_sizes, is_full_size
from testkit.tcp_proxy import TcpProxy, running_tcp_proxy
from testkit.waiting import ProcessStartError, eventually, wait_listening
from testkit.webhook_receiver import Received, WebhookReceiver, always, running_receiver
from testkit.workload import (
    ASYNCIO_GENERATOR,
    FailedCall,
    LoadClient,
    LoadReport,
    SessionKey,
    account_of,
    create_sessions,
    plan_sessions,
    session_states,
    wait_all_ready,
)

__all__ = [
    "ASYNCIO_GENERATOR",
    "HOST",
    "ChaosSizes",
    "ChecklistReport",
    "ChecklistSizes",
    "EtcdCluster",
    "EtcdProcess",
    "EtcdServerTls",
    "FailedCall",
    "InProcessMesh",
    "LoadClient",
    "LoadReport",
    "MeshSettings",
    "OwnerSample",
    "OwnershipMonitor",
    "ProcessMesh",
    "ProcessStartError",
    "Received",
    "RunningNode",
    "SeaweedFs",
    "SessionKey",
    "TcpProxy",
    "WebhookReceiver",
    "account_of",
    "always",
    "assert_exactly_once",
    "assert_never_two_live",
    "chaos_sizes",
    "create_sessions",
    "etcd_binary",
    "etcd_in",
    "eventually",
    "free_port",
    "is_full_size",
    "one_at_a_time",
    "plan_sessions",
    "ring_placement",
    "routed_nodes",
    "run_checklist",
    "running_inprocess_mesh",
    "running_node",
    "running_process_mesh",
    "running_receiver",
    "running_seaweedfs",
    "running_simnet",
    "running_tcp_proxy",
    "session_states",
    "start_sessions",
    "undelivered",
    "wait_all_delivered",
    "wait_all_ready",
    "wait_listening",
    "wait_owners_follow_ring",
    "weed_binary",
]
