"""Guards on the package layout: the namespace mapping, the stdlib `http`, banned bare imports."""

from __future__ import annotations

import ast
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
    """cuelog.runtime, .actors, .http and .cli import; there is no cuelog/ folder."""
    import cuelog.actors
    import cuelog.cli
    import cuelog.http.api
    import cuelog.runtime

    assert cuelog.cli.__name__ == "cuelog.cli"
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


LAYERS = ("runtime", "actors", "http", "cli")


def _private_imports(path: Path) -> list[str]:
    """Every `cuelog.<layer>._module` this file imports (at any depth in the file)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if len(parts) > 2 and parts[0] == "cuelog" and parts[2].startswith("_"):
                found.append(name)
    return found


def test_no_module_imports_another_packages_private_modules() -> None:
    """Each layer is used through its public surface: outside a package (in the other layers,
    in benchmarks and in tests of other layers) nothing imports `cuelog.<pkg>._anything`.
    `tests/<layer>/` may test its own layer's private modules."""
    offences = []
    folders = [*LAYERS, "benchmarks", "tests"]
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT)
            own = rel.parts[0] if rel.parts[0] in LAYERS else None
            if rel.parts[0] == "tests" and len(rel.parts) > 2 and rel.parts[1] in LAYERS:
                own = rel.parts[1]
            for name in _private_imports(path):
                if name.split(".")[1] != own:
                    offences.append(f"{rel}: {name}")
    assert offences == []


def test_public_surfaces_export_what_they_list() -> None:
    """Every name in each layer's `__all__` exists, and none is private."""
    import cuelog.actors
    import cuelog.cli
    import cuelog.http.api
    import cuelog.runtime

    for module in (cuelog.runtime, cuelog.actors, cuelog.http.api, cuelog.cli):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"
            assert not name.startswith("_"), f"{module.__name__}.{name}"
