"""`cuelog keys create|list|revoke` on a data dir, offline, and refused beside a running server."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import trio
from click.testing import CliRunner

from cuelog.cli import main
from tests.http.operator_support import bearer, serving
from tests.support import CUELOG


def test_create_list_revoke_offline_and_the_server_honours_them(tmp_path: Path) -> None:
    """A key made offline shows its secret once; list never shows it; revoke marks it revoked."""
    data_dir = str(tmp_path / "data")
    runner = CliRunner()
    created = runner.invoke(
        main,
        ["keys", "create", "--data-dir", data_dir, "--name", "ci", "--scope", "read", "--json"],
    )
    assert created.exit_code == 0, created.output
    info = json.loads(created.stdout)
    assert info["key"].startswith("cue_") and info["scopes"] == ["read"]

    listed = runner.invoke(main, ["keys", "list", "--data-dir", data_dir])
    assert listed.exit_code == 0, listed.output
    assert info["id"] in listed.stdout and "active" in listed.stdout
    assert info["key"] not in listed.output

    revoked = runner.invoke(main, ["keys", "revoke", "--data-dir", data_dir, info["id"]])
    assert revoked.exit_code == 0, revoked.output
    again = runner.invoke(main, ["keys", "list", "--data-dir", data_dir, "--json"])
    [after] = json.loads(again.stdout)
    assert after["revoked"] is True and "key" not in after
    missing = runner.invoke(main, ["keys", "revoke", "--data-dir", data_dir, "key_nope"])
    assert missing.exit_code == 1


async def test_offline_key_works_on_the_server_and_a_held_dir_is_one_clear_line(
    tmp_path: Path,
) -> None:
    """A key created offline authenticates once the server starts; while the server holds the
    dir, `cuelog keys create` exits 2 with one line pointing at POST /v1/keys."""
    data_dir = tmp_path / "data"
    create = [CUELOG, "keys", "create", "--data-dir", str(data_dir), "--scope", "read"]
    made = await trio.run_process([*create, "--name", "n", "--json"], capture_stdout=True)
    secret = json.loads(made.stdout)["key"]
    async with serving(data_dir) as served:
        async with httpx.AsyncClient(base_url=served.url, headers=bearer(secret)) as client:
            assert (await client.get("/v1/agents")).status_code == 200
        held = await trio.run_process(
            [*create, "--name", "x"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert held.returncode == 2
        lines = held.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and "POST /v1/keys" in lines[0], lines
        listed = await trio.run_process(
            [CUELOG, "keys", "list", "--data-dir", str(data_dir)], capture_stdout=True
        )
        assert b"active" in listed.stdout and secret.encode() not in listed.stdout
