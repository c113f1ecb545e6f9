"""The Node clients people use, unmodified, against a real `cuelog serve` process: the OpenAI
Node SDK (chat, client tools, streams, Responses) and the Vercel AI SDK (`generateText`,
`streamText` with a tool, token limits) over both its Responses and chat model classes.

`tests/node/clients.mjs` asserts each behaviour itself; this test runs it and checks every check
ran. The packages come from `tests/node/package-lock.json` (`make install` runs `npm ci`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import running_server

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
API_KEY = "node-clients-key-0123456789abcdef"
CHECKS = 14


def _installed() -> None:
    if not (NODE_DIR / "node_modules" / ".package-lock.json").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            check=True,
            timeout=600,
        )


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_node_clients(tmp_path: Path) -> None:
    """Every check of clients.mjs passes against a real server."""
    node = shutil.which("node")
    assert node is not None, "npm is installed but node is not"
    _installed()
    with running_server(tmp_path / "data", "--api-key", API_KEY) as server:
        env = {**os.environ, "CUELOG_URL": server.url, "CUELOG_KEY": API_KEY}
        done = subprocess.run(
            [node, "clients.mjs"],
            check=False,
            cwd=NODE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr or done.stdout
    checks = json.loads(done.stdout.strip().splitlines()[-1])["checks"]
    assert len(checks) == CHECKS, checks
