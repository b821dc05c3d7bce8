"""Scenarios 2 (load) and 3 (scale) of the benchmark at smoke size: they run to the end against
a real process mesh and report what the harness reads."""

from __future__ import annotations

from bench.scenarios_load import SMOKE_LOAD_SIZES, run_load_scenario
from bench.scenarios_scale import SMOKE_SCALE_SIZES, run_scale_scenario


async def test_load_scenario_smoke() -> None:
    result = await run_load_scenario(SMOKE_LOAD_SIZES)

    create_qr = result["create_qr"]
    assert create_qr["errors"] == 0, create_qr["error_codes"]
    assert create_qr["ok"] == SMOKE_LOAD_SIZES.create_count
    assert (
        create_qr["qr_in_snapshot"] + create_qr["qr_in_event"] + create_qr["qr_passed_before_watch"]
        == SMOKE_LOAD_SIZES.create_count
    )
    assert result["send"]["errors"] == 0, result["send"]["error_codes"]
    assert result["send"]["ok"] == SMOKE_LOAD_SIZES.create_count
    assert result["mixed"]["errors"] == 0
    assert result["mixed"]["calls"] > 0
    assert set(result["mixed"]["per_method"]) == {"CreateSession", "SendMessage", "GetSession"}
    assert sum(result["sessions_per_node"].values()) == SMOKE_LOAD_SIZES.create_count
    for key in ("create_qr_p95_ms", "send_p95_ms", "mixed_median_ms"):
        assert isinstance(result[key], float) and result[key] > 0
        assert result["checklist_ratio"][key] > 0
    assert result["simnet"]["replaced"] == 0


async def test_scale_scenario_smoke() -> None:
    result = await run_scale_scenario(SMOKE_SCALE_SIZES)

    assert result["create_errors"] == {}
    assert sum(result["sessions_per_node"].values()) == SMOKE_SCALE_SIZES.session_count
    assert len(result["rss_kb"]) == SMOKE_SCALE_SIZES.node_count
    assert result["memory_per_session_kb"] > 0
    assert result["create_all_seconds"] > 0
    assert result["simnet_live_accounts"] == SMOKE_SCALE_SIZES.session_count
