"""Built-in tool settings at run time: `GET`/`PATCH /v1/tools/{name}` turn a tool on or off,
set the `files` tool's sandbox and the `http_fetch` allow-list, as the config file does."""

from __future__ import annotations

from typing import Annotated

import msgspec
from quart import Response

from cuelog.actors import BuiltinTools, ToolSettings, ToolSettingsView
from cuelog.http._auth import Routes, principal
from cuelog.http._services import Services
from cuelog.http._wire import ApiError, json_response, to_json

Root = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
Host = Annotated[str, msgspec.Meta(min_length=1, max_length=253)]


class ToolSettingsPatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What to change; `files_root` is for `files`, `allow_hosts` for `http_fetch` (an empty
    list allows any public host)."""

    enabled: bool | None = None
    files_root: Root | None = None
    allow_hosts: Annotated[list[Host], msgspec.Meta(max_length=256)] | None = None


def register_tool_settings_routes(routes: Routes, services: Services) -> None:
    def builtins() -> BuiltinTools:
        if services.builtin_tools is None:
            raise ApiError(503, "tool settings are not available on this server")
        return services.builtin_tools

    def answer(view: ToolSettingsView) -> Response:
        return json_response(to_json(view))

    @routes.add("/v1/tools/<name>", ["GET"], "read", answers={200: ToolSettingsView})
    async def get_tool_settings(name: str) -> Response:
        """A built-in tool's settings: on or off, and its sandbox or allow-list."""
        return answer(builtins().view(name))

    @routes.add(
        "/v1/tools/<name>",
        ["PATCH"],
        "admin",
        body=ToolSettingsPatch,
        answers={200: ToolSettingsView},
    )
    async def patch_tool_settings(name: str) -> Response:
        """Change a built-in's settings; recorded in the log, applied at once and at every
        start over the config file's."""
        body, _ = await services.read(ToolSettingsPatch)
        patch = ToolSettings(
            enabled=body.enabled, files_root=body.files_root, allow_hosts=body.allow_hosts
        )
        view = await builtins().change(name, patch, actor=principal().key_id)
        return answer(view)
