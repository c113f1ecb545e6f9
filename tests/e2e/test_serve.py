"""The real `cuelog serve` process: it starts, answers, and exits cleanly on SIGTERM."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support import running_server


def test_serve_answers_health_and_exits_zero_on_sigterm(tmp_path: Path) -> None:
    """`cuelog serve` on port 0 answers GET /health and exits 0 after SIGTERM."""
    with running_server(tmp_path / "data") as server:
        response = httpx.get(f"{server.url}/health", timeout=10)
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "auth_required": False}
        assert server.terminate() == 0


def test_serve_refuses_public_bind_without_key(tmp_path: Path) -> None:
    """Binding a non-loopback address with no API key is refused with exit 2 and a clear line."""
    import subprocess

    from tests.support import CUELOG

    result = subprocess.run(
        [CUELOG, "serve", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "server.host" in result.stderr and "api_key" in result.stderr
