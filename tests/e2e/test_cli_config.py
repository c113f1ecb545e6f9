"""`cuelog serve` with bad settings exits 2 with one clear line, before binding anything."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support import CUELOG


def _serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = subprocess.run(
        [CUELOG, "serve", "--data-dir", str(tmp_path / "data"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
    )
    return result.returncode, result.stderr


def test_port_that_is_not_a_number_exits_2_naming_the_flag(tmp_path: Path) -> None:
    """`--port notanumber` exits 2 and the error names --port."""
    code, stderr = _serve(tmp_path, "--port", "notanumber")
    assert code == 2
    errors = [line for line in stderr.splitlines() if "rror" in line]
    assert len(errors) == 1 and "--port" in errors[0], stderr


def test_bad_toml_exits_2_with_one_line(tmp_path: Path) -> None:
    """A config file that is not TOML exits 2 with one `cuelog:` line naming the file."""
    config = tmp_path / "bad.toml"
    config.write_text("[server\nport =")
    code, stderr = _serve(tmp_path, "--config", str(config))
    assert code == 2
    assert stderr.strip().count("\n") == 0, stderr
    assert stderr.startswith("cuelog: ") and "bad.toml" in stderr


def test_invalid_env_value_exits_2_naming_the_key(tmp_path: Path) -> None:
    """An invalid CUELOG_* value exits 2 with one line naming the setting's key."""
    code, stderr = _serve(tmp_path, "--port", "0", env={"CUELOG_LOG_SYNC": "sometimes"})
    assert code == 2
    assert stderr.strip().count("\n") == 0, stderr
    assert stderr.startswith("cuelog: log.sync: ")
