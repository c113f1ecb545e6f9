"""`cuelog projections status|rebuild` beside a running server, and the lag in /metrics."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from tests.http.live import live_server
from tests.support import CUELOG


async def test_status_and_rebuild_beside_a_running_server(tmp_path: Path) -> None:
    """status shows the catalogs at the log's head; rebuilding the runs and sessions catalogs
    from seq 0 beside the server gives the same runs and sessions lists; /metrics reports the
    lag."""
    data_dir = tmp_path / "data"
    async with live_server(data_dir) as live:
        for i in range(6):
            response = await live.client.post(
                "/v1/agents/default/wake", json={"message": f"hi {i}", "session_key": f"k{i % 2}"}
            )
            assert response.status_code == 200, response.text
        before = (await live.client.get("/v1/runs")).json()
        assert len(before["data"]) == 6
        sessions = (await live.client.get("/v1/sessions")).json()
        assert [s["key"] for s in sessions["data"]] == ["k0", "k1"]
        head = await live.head_seq()
        status = await trio.run_process(
            [CUELOG, "projections", "status", str(data_dir), "--json"], capture_stdout=True
        )
        listed = [json.loads(line) for line in status.stdout.decode().splitlines()]
        assert [(p["name"], p["checkpoint"], p["failed_seq"]) for p in listed] == [
            (name, head, None) for name in ("open_runs", "runs", "sessions")
        ]
        metrics = (await live.client.get("/metrics")).text
        assert 'cuelog_projection_lag_events{projection="runs"} 0.0' in metrics
        assert f'cuelog_projection_checkpoint_seq{{projection="runs"}} {float(head)}' in metrics
        [cpu] = [
            ln for ln in metrics.splitlines() if ln.startswith("cuelog_projection_cpu_seconds")
        ]
        assert cpu.startswith("cuelog_projection_cpu_seconds_total ") and float(cpu.split()[1]) > 0
        rebuilt = await trio.run_process(
            [CUELOG, "projections", "rebuild", "runs", str(data_dir)], capture_stdout=True
        )
        assert f"rebuilt runs: {head:,} events applied" in rebuilt.stdout.decode()
        after = (await live.client.get("/v1/runs")).json()
        assert after == before
        await trio.run_process(
            [CUELOG, "projections", "rebuild", "sessions", str(data_dir)], capture_stdout=True
        )
        assert (await live.client.get("/v1/sessions")).json() == sessions
        unknown = await trio.run_process(
            [CUELOG, "projections", "rebuild", "nope", str(data_dir)],
            capture_stderr=True,
            check=False,
        )
        assert unknown.returncode == 2
        known = "open_runs, runs, sessions"
        assert f"no projection 'nope' (there are: {known})" in unknown.stderr.decode()
