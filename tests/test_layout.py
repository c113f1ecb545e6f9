"""Guards on the package layout: the namespace mapping, the stdlib `http`, banned bare imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_stdlib_http_is_not_shadowed_from_repo_root() -> None:
    """Running Python from the repo root, `import http` is still the standard library."""
    out = subprocess.run(
        [sys.executable, "-c", "import http, http.client; print(http.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "site-packages" not in out
    assert Path(out.strip()).parent.parent == Path(subprocess.__file__).parent


def test_layers_import_under_the_cuelog_namespace() -> None:
    """cuelog.runtime, cuelog.actors and cuelog.http import; there is no cuelog/ folder."""
    import cuelog.actors
    import cuelog.http._app
    import cuelog.runtime

    assert cuelog.runtime.__name__ == "cuelog.runtime"
    assert cuelog.actors.__name__ == "cuelog.actors"
    assert not (ROOT / "cuelog").exists()
    assert not (ROOT / "http" / "__init__.py").exists()


def test_bare_layer_imports_are_banned_by_ruff(tmp_path: Path) -> None:
    """ruff rejects `import runtime...` and `from actors import ...` (a second module copy)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import runtime._log\nfrom actors import x\n\nprint(runtime, x)\n")
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "ruff"),
            "check",
            "--no-cache",
            "--select",
            "TID251",
            "--config",
            str(ROOT / "pyproject.toml"),
            str(bad),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1, result.stdout
    assert result.stdout.count("TID251") == 2, result.stdout


def test_runtime_public_surface_is_explicit() -> None:
    """Every name in cuelog.runtime.__all__ exists and nothing private is exported."""
    import cuelog.runtime as rt

    for name in rt.__all__:
        assert hasattr(rt, name), name
        assert not name.startswith("_")
