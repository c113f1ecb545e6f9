"""docs/api.md lists every route the server has, with its method and scope."""

from __future__ import annotations

import re
from pathlib import Path

from tests.http.live import live_server

API_MD = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def documented_routes() -> set[tuple[str, str, str]]:
    """(method, path with parameters as {}, scope) for every row of the route table."""
    rows: set[tuple[str, str, str]] = set()
    for line in API_MD.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] not in {"GET", "POST", "PATCH", "DELETE"}:
            continue
        for path in re.findall(r"`([^`]+)`", cells[1]):
            rows.add((cells[0], re.sub(r"\{[^}]+\}", "{}", path), cells[2]))
    return rows


async def test_every_route_is_documented_with_its_scope(tmp_path: Path) -> None:
    """Each operation in /v1/openapi.json has a row in docs/api.md with its method and scope."""
    async with live_server(tmp_path / "data") as live:
        spec = (await live.client.get("/v1/openapi.json")).json()
    documented = documented_routes()
    missing = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            scope = operation.get("x-cuelog-scope", "public")
            row = (method.upper(), re.sub(r"\{[^}]+\}", "{}", path), scope)
            if row not in documented:
                missing.append(row)
    assert not missing, f"docs/api.md lacks these routes (method, path, scope): {missing}"
