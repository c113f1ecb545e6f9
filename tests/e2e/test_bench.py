"""`cuelog bench` against real servers: every workload reports sane figures; bad flags exit 2."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cuelog.cli import main
from tests.support import CUELOG, ServerProcess, running_server

KEY = "bench-test-key-0123456789abcdef"
QUICK = ("--json", "--duration", "2", "--warmup", "0.2", "--concurrency", "4")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("bench") / "data", "--api-key", KEY) as proc:
        yield proc


def bench(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    result = subprocess.run(
        [CUELOG, "bench", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )
    report = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.returncode, report, result.stderr


def assert_sane(report: dict[str, Any]) -> None:
    assert report["requests"] > 0 and report["requests_per_s"] > 0, report
    assert report["errors"] == {} and report["ok"] == report["requests"], report
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"], report
    events = report["events"]
    assert events["appended"] >= report["requests"], report
    assert events["per_second"] > 0, report
    assert 0 < report["client_cpu"]["fraction"] < 4, report
    assert report["passed"] is True


@pytest.mark.parametrize(
    "workload", ["chat", "chat-stream", "wake-sync", "wake-async", "sessions", "mixed"]
)
def test_workload_reports_rate_latency_and_events(server: ServerProcess, workload: str) -> None:
    """Each workload against a running server completes requests without errors, and the log
    grew by at least one event per request."""
    code, report, stderr = bench(
        "--url", server.url, "--key", KEY, "--workload", workload, "--sessions", "8", *QUICK
    )
    assert code == 0, stderr
    assert report["workload"] == workload and report["url"] == server.url
    assert report["local_server"] is False
    assert_sane(report)
    if workload in ("chat-stream", "wake-async"):
        ttft = report["ttft_ms"]
        assert ttft is not None and 0 < ttft["p50"] <= report["latency_ms"]["max"], report
    if workload == "mixed":
        assert set(report["kinds"]) == {
            "chat",
            "chat-stream",
            "wake-sync",
            "wake-async",
            "sessions",
        }


def test_requests_bounds_the_count(server: ServerProcess) -> None:
    """`--requests N` measures exactly N requests."""
    code, report, stderr = bench(
        "--url", server.url, "--key", KEY, "--json", "--requests", "30", "--warmup", "0"
    )
    assert code == 0, stderr
    assert report["requests"] == 30 and report["ok"] == 30, report


def test_default_starts_its_own_server_and_compares_against(server: ServerProcess) -> None:
    """With no --url it benchmarks a throwaway local server (and reads its CPU), and --against
    runs the same chat workload on another OpenAI-compatible endpoint."""
    code, report, stderr = bench(
        *QUICK,
        "--against",
        f"{server.url}/v1",
        "--against-key",
        KEY,
        "--against-model",
        "default",
    )
    assert code == 0, stderr
    assert report["local_server"] is True and report["url"] != server.url
    assert report["server_cpu"] is not None
    assert_sane(report)
    against = report["against"]
    assert against["url"] == server.url and against["requests"] > 0, against
    assert against["errors"] == {} and against["events"] is None


def test_errors_above_the_limit_exit_1_and_are_counted_by_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that allows one open stream per key answers the others 429: bench counts them
    by status and exits 1."""
    monkeypatch.setenv("CUELOG_SERVER_MAX_STREAMS_PER_KEY", "1")
    with running_server(tmp_path / "data", "--api-key", KEY) as capped:
        code, report, stderr = bench(
            "--url", capped.url, "--key", KEY, "--workload", "chat-stream", *QUICK
        )
    assert code == 1, stderr
    assert report["errors"].get("429", 0) > 0 and report["passed"] is False, report
    assert "--max-error-rate" in stderr


def test_unreachable_server_exits_2_with_one_line() -> None:
    """A --url nothing listens on is reported in one line, exit 2, before any load."""
    code, _, stderr = bench("--url", "http://127.0.0.1:9", "--json", "--duration", "1")
    assert code == 2
    assert "cannot reach http://127.0.0.1:9" in stderr


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--concurrency", "0"], "--concurrency"),
        (["--duration", "-1"], "--duration"),
        (["--duration", "0"], "--duration"),
        (["--workload", "nope"], "--workload"),
        (["--url", "127.0.0.1:8088"], "--url"),
        (["--requests", "0"], "--requests"),
        (["--max-error-rate", "2"], "--max-error-rate"),
        (["--key", "k"], "--key"),
        (["--workload", "wake-sync", "--against", "http://127.0.0.1:1"], "--against"),
    ],
)
def test_bad_flags_are_usage_errors(args: list[str], names: str) -> None:
    """A bad flag exits 2 with click's usage error naming it, before any server starts."""
    result = CliRunner().invoke(main, ["bench", *args])
    assert result.exit_code == 2, result.output
    assert "Usage: " in result.output and names in result.output, result.output
