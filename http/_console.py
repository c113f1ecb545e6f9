"""The web console: static files under /ui, shipped in the package and served by the API server.

The files are public on purpose: they hold no data, and every API call the page makes carries the
key the user typed in. Only the files found in `console/` at startup are served, so a request path
can never reach anything else on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from quart import Response
from quart_trio import QuartTrio

from cuelog.http._wire import ApiError

PREFIX: Final = "/ui"
_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# Everything the page loads comes from this server; no inline script, no third-party origin.
_HEADERS: Final = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
}


def console_assets() -> dict[str, tuple[bytes, str]]:
    """The console's files by name, with their content types."""
    # Beside this module in every kind of install (wheel, strict or default editable):
    # `importlib.resources` cannot see into a namespace package mapped by an editable finder.
    folder = Path(__file__).with_name("console")
    assets: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            assets[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    return assets


def register_console_routes(app: QuartTrio) -> None:
    """`GET /ui` (the page) and `GET /ui/<name>` (its scripts and styles)."""
    assets = console_assets()

    def asset(name: str) -> Response:
        found = assets.get(name)
        if found is None:
            raise ApiError(404, f"the console has no file {name!r}")
        body, content_type = found
        return Response(body, content_type=content_type, headers=_HEADERS)

    async def index() -> Response:
        return asset("index.html")

    async def static_file(name: str) -> Response:
        return asset(name)

    # The page links its files by absolute path, so /ui and /ui/ can both serve it.
    app.add_url_rule(PREFIX, "console_page", index, methods=["GET"])
    app.add_url_rule(f"{PREFIX}/", "console_index", index, methods=["GET"])
    app.add_url_rule(f"{PREFIX}/<name>", "console_file", static_file, methods=["GET"])
