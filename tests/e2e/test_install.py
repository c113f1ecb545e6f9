"""cuelog serves its console and docs page however it is installed: from a wheel
(`pip install .`) and from a default editable install (`pip install -e .`), not only the strict
editable install `make test` uses."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest

from tests.support import start_server

ROOT = Path(__file__).resolve().parent.parent.parent


def _venv_with_cuelog(where: Path, *install: str) -> Path:
    """A new venv that sees this venv's dependencies and has cuelog installed as asked, built
    offline with this venv's setuptools (nothing is fetched from the network)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "cuelog-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            *install,
        ],
        cwd=where,
        check=True,
        capture_output=True,
    )
    return where / "bin" / "cuelog"


@pytest.mark.parametrize("install", [["-e", str(ROOT)], [str(ROOT)]], ids=["editable", "wheel"])
def test_console_and_docs_are_served_from_any_install(tmp_path: Path, install: list[str]) -> None:
    """The installed `cuelog serve` answers /ui, its script, /docs and the OpenAPI document."""
    cuelog = _venv_with_cuelog(tmp_path / "venv", *install)
    server = start_server(tmp_path / "data", cuelog=str(cuelog))
    try:
        with httpx.Client(base_url=server.url) as client:
            page = client.get("/ui")
            assert page.status_code == 200
            assert "<html" in page.text.lower()
            assert client.get("/ui/app.js").status_code == 200
            docs = client.get("/docs")
            assert docs.status_code == 200
            assert "openapi" in docs.text.lower()
            assert client.get("/v1/openapi.json").json()["openapi"].startswith("3.1")
    finally:
        assert server.terminate() == 0
