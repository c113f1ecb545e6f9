"""The operator side of the API: keys, approvals, tools, audit, emergency stop and metrics."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import msgspec
import structlog
import trio
from quart import Response, current_app, request

from cuelog.actors._events import DOMAIN_CODEC, EmergencyStopChanged
from cuelog.actors._runtime import AgentRuntime
from cuelog.http._auth import Routes, caller, principal
from cuelog.http._keys import KeyStore
from cuelog.http._schemas import Anchored, AuditHead
from cuelog.http._wire import ApiError, json_response, query_int, sse_frame, sse_response, to_json
from cuelog.runtime import CuelogError, LmdbEventLog, RecordedEvent

logger = structlog.get_logger("cuelog.operator")

SYSTEM_STREAM = "system"


class KeyBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str
    scopes: list[str]
    expires_at: int | None = None


class ApprovalBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    decision: Literal["approve", "deny"]
    args_digest: str
    reason: str = ""


class InvokeBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str
    args: dict[str, Any] = msgspec.field(default_factory=dict)
    dry_run: bool = False


def emergency_stop_state(log: LmdbEventLog) -> bool:
    """Whether the last recorded emergency-stop change left runs refused."""
    version = log.stream_version(SYSTEM_STREAM)
    for record in reversed(log.read_stream(SYSTEM_STREAM, max(version - 50, 1))):
        if record.type == "EmergencyStopChanged":
            event = DOMAIN_CODEC.decode(record.type, record.data)
            assert isinstance(event, EmergencyStopChanged)
            return event.stopped
    return False


def register_operator_routes(
    routes: Routes,
    runtime: AgentRuntime,
    log: LmdbEventLog,
    keys: KeyStore,
    read_body: Any,
    anchor_key: bytes | None,
) -> None:
    """Keys, approvals, tools, audit and emergency stop."""

    def actor() -> str | None:
        return principal().key_id

    # -- keys ----------------------------------------------------------------------------------

    @routes.add("/v1/keys", ["POST"], "admin")
    async def create_key() -> Response:
        """Issue an API key; the secret is in this response only."""
        body, _ = await read_body(KeyBody)
        if not body.name.strip() or len(body.name) > 200:
            raise ApiError(400, "name must be 1-200 characters", param="name")
        try:
            info, secret = await keys.create(
                body.name, body.scopes, expires_at=body.expires_at, actor=actor()
            )
        except ValueError as exc:
            raise ApiError(400, str(exc), param="scopes") from None
        payload = {**msgspec.structs.asdict(info), "key": secret}
        return json_response(to_json(payload), 201)

    @routes.add("/v1/keys", ["GET"], "admin")
    async def list_keys() -> Response:
        """Every key issued (never the secret)."""
        return json_response(to_json({"data": keys.all(), "next_cursor": None}))

    @routes.add("/v1/keys/<key_id>", ["DELETE"], "admin")
    async def revoke_key(key_id: str) -> Response:
        """Revoke a key at once."""
        info = await keys.revoke(key_id, actor=actor())
        if info is None:
            raise ApiError(404, f"no key {key_id!r}")
        return json_response(to_json(info))

    # -- approvals -----------------------------------------------------------------------------

    @routes.add("/v1/approvals", ["GET"], "read")
    async def list_approvals() -> Response:
        """Tool calls waiting for a decision (only `status=pending` is kept in memory)."""
        status = request.args.get("status", "pending")
        if status != "pending":
            raise ApiError(400, "status must be pending", param="status")
        out = []
        for approval_id, run_id in sorted(runtime.pending_approvals().items()):
            try:
                detail = await runtime.approval_detail(approval_id, caller=caller())
            except CuelogError:
                continue
            if detail is not None:
                out.append({**detail, "run_id": run_id})
        return json_response(to_json({"data": out, "next_cursor": None}))

    @routes.add("/v1/approvals/<approval_id>", ["POST"], "approve")
    async def decide_approval(approval_id: str) -> Response:
        """Approve or deny a pending tool call; `args_digest` must match its arguments."""
        body, _ = await read_body(ApprovalBody)
        view = await runtime.decide_approval(
            approval_id,
            approve=body.decision == "approve",
            args_digest=body.args_digest,
            by=actor(),
            reason=body.reason,
            caller=caller(),
        )
        return json_response(
            to_json(
                {
                    "id": approval_id,
                    "decision": body.decision,
                    "run_id": view.id,
                    "run_status": view.status,
                }
            )
        )

    # -- tools ---------------------------------------------------------------------------------

    @routes.add("/v1/tools", ["GET"], "read")
    async def list_tools() -> Response:
        """Every built-in tool: schema, whether it is on, and the approval that applies."""
        tools = runtime.settings.tools
        default = await runtime.get_agent("default")
        data = []
        for name in tools.names():
            spec = tools.spec_of(name)
            policy = default.spec.tool_approval.get(name, default.spec.approval)
            data.append(
                {
                    "name": name,
                    "description": spec.description,
                    "parameters": spec.parameters,
                    "enabled": tools.is_enabled(name),
                    "approval_policy": "auto" if runtime.settings.auto_approve else policy,
                }
            )
        return json_response(to_json({"data": data, "next_cursor": None}))

    @routes.add("/v1/tools/invoke", ["POST"], "chat")
    async def invoke_tool() -> Response:
        """Run a tool through a run of the `tools` agent (same approvals, same log);
        `dry_run` only validates and shows what would run."""
        body, _ = await read_body(InvokeBody)
        tools = runtime.settings.tools
        if body.name not in tools.names():
            raise ApiError(404, f"no tool named {body.name!r}", param="name")
        problems = tools.check_args(body.name, body.args)
        if problems:
            raise ApiError(400, f"{body.name}: {problems}", param="args")
        if not tools.is_enabled(body.name):
            raise ApiError(
                409, f"tool {body.name!r} is disabled on this server", code="tool_disabled"
            )
        would = {"tool": body.name, "args": body.args, "agent": "tools"}
        if body.dry_run:
            return json_response(to_json({"dry_run": True, "valid": True, "would_run": would}))
        view = await runtime.invoke_tool(body.name, body.args, caller=caller())
        status = 200 if view.status in {"completed", "failed", "cancelled"} else 202
        output = view.messages[-2].content if len(view.messages) >= 2 else None
        return json_response(
            to_json(
                {
                    "run_id": view.id,
                    "status": view.status,
                    "output": output,
                    "pending_approvals": view.pending_approvals,
                    "events_url": f"/v1/runs/{view.id}/events",
                }
            ),
            status,
        )

    # -- audit ---------------------------------------------------------------------------------

    @routes.add("/v1/audit/head", ["GET"], "read")
    async def audit_head() -> Response:
        """The log's head seq and hash, and the last anchor's seal."""
        head = log.head()
        anchor = log.stored_anchor()
        answer = AuditHead(
            seq=head.seq,
            hash=head.hash.hex(),
            anchored_seq=anchor.seq if anchor else None,
            anchored_hash=anchor.hash.hex() if anchor else None,
            anchored_at=anchor.ts // 1_000_000 if anchor else None,
            mac=anchor.mac.hex() if anchor else None,
        )
        return json_response(to_json(answer))

    @routes.add("/v1/audit/anchor", ["POST"], "admin")
    async def audit_anchor() -> Response:
        """Seal the head with the anchor key (log.anchor_key_file); keep the answer elsewhere."""
        if anchor_key is None:
            raise ApiError(
                409,
                "no anchor key: set log.anchor_key_file (outside the data dir)",
                code="no_anchor_key",
            )
        sealed = await log.anchor(anchor_key)
        return json_response(to_json(Anchored.of(sealed)))

    @routes.add("/v1/audit/verify", ["POST"], "admin")
    async def audit_verify() -> Response:
        """Verify the chain and indexes (and the anchor when its key is configured); with
        Accept: text/event-stream, progress events stream until the report."""
        if "text/event-stream" not in request.headers.get("accept", ""):
            report = await log.verify(anchor_key=anchor_key)
            return json_response(to_json(report))

        progress = [0, log.head().seq]
        result: list[Any] = []
        finished = trio.Event()

        def on_progress(done: int, total: int) -> None:
            progress[0], progress[1] = done, total

        async def run() -> None:
            try:
                result.append(await log.verify(anchor_key=anchor_key, progress=on_progress))
            finally:
                finished.set()

        # The walk runs in the app's nursery; the stream only reports on it, so a client that
        # leaves early stops nothing but its own stream.
        current_app.nursery.start_soon(run)  # type: ignore[attr-defined]

        async def frames() -> AsyncIterator[bytes]:
            while not finished.is_set():
                yield sse_frame(
                    to_json({"checked": progress[0], "total": progress[1]}), event="progress"
                )
                with trio.move_on_after(0.25):
                    await finished.wait()
            if result:
                yield sse_frame(to_json(result[0]), event="report")

        return sse_response(frames())

    @routes.add("/v1/audit/events", ["GET"], "admin")
    async def audit_events() -> Response:
        """The activity view: filter by actor, type, stream prefix and time; cursor = seq."""
        after = query_int("cursor", 0)
        limit = min(max(query_int("limit", 100), 1), 1000)
        actor_filter = request.args.get("actor") or None
        types = set(filter(None, (request.args.get("type") or "").split(",")))
        prefix = request.args.get("stream_prefix") or None
        since = query_int("since", 0) * 1_000_000
        until = query_int("until", 0) * 1_000_000 or None
        out: list[RecordedEvent] = []
        cursor = after
        scanned = 0
        with trio.move_on_after(5):
            while len(out) <= limit and scanned < 1_000_000:
                batch = log.read_all(cursor, 1000)
                if not batch:
                    break
                scanned += len(batch)
                for event in batch:
                    cursor = event.seq
                    if (
                        (actor_filter is None or event.actor == actor_filter)
                        and (not types or event.type in types)
                        and (prefix is None or event.stream.startswith(prefix))
                        and event.ts >= since
                        and (until is None or event.ts <= until)
                    ):
                        out.append(event)
                await trio.lowlevel.checkpoint()
        from cuelog.http._app import event_json

        more = len(out) > limit
        out = out[:limit]
        body = b'{"data":[' + b",".join(event_json(e) for e in out) + b'],"next_cursor":'
        body += (str(out[-1].seq).encode() if more else b"null") + b"}"
        return json_response(body)

    # -- emergency stop ------------------------------------------------------------------------

    @routes.add("/v1/emergency-stop", ["POST"], "admin")
    async def emergency_stop() -> Response:
        """Cancel every run and refuse new ones until released."""
        started = time.monotonic()
        cancelled = await runtime.emergency_stop()
        await log.append(
            SYSTEM_STREAM,
            [EmergencyStopChanged(stopped=True, cancelled_runs=cancelled)],
            actor=actor(),
        )
        return json_response(
            to_json(
                {
                    "stopped": True,
                    "cancelled_runs": cancelled,
                    "seconds": round(time.monotonic() - started, 3),
                }
            )
        )

    @routes.add("/v1/emergency-stop/release", ["POST"], "admin")
    async def release_stop() -> Response:
        """Allow new runs again."""
        runtime.release_emergency_stop()
        await log.append(SYSTEM_STREAM, [EmergencyStopChanged(stopped=False)], actor=actor())
        return json_response(to_json({"stopped": False}))
