"""Loops (scheduled runs): create, list, read, change, delete, toggle and fire now.

Times on the wire: `trigger.at` and `end_at` are RFC 3339 with an offset; `next_fire_at` and a
fire's `scheduled_at` are seconds since the Unix epoch, like every other time the API answers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from quart import Response

from cuelog.actors import FireView, Loops, LoopSpec, LoopTrigger, LoopView
from cuelog.http._auth import Routes, principal
from cuelog.http._bodies import CallbackUrl, Id
from cuelog.http._params import CURSOR, limit
from cuelog.http._schemas import Deleted
from cuelog.http._services import Services, page_json
from cuelog.http._wire import ApiError, json_response, to_json

LOOPS_LIMIT = limit(50, 500)

LoopId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$", max_length=64)]
Cron = Annotated[str, msgspec.Meta(min_length=9, max_length=200)]
Zone = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Seconds = Annotated[int, msgspec.Meta(ge=1, le=10 * 366 * 86400)]
When = Annotated[datetime, msgspec.Meta(tz=True)]
Message = Annotated[str, msgspec.Meta(min_length=1, max_length=100_000)]
MaxFires = Annotated[int, msgspec.Meta(ge=1, le=1 << 31)]
SessionPolicy = Literal["per_loop", "per_fire"]
Missed = Literal["skip", "run_once"]


class TriggerBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Exactly one of: `cron` (5 fields, with `tz`, an IANA time zone, UTC by default),
    `every` (seconds) or `at` (one time, RFC 3339 with an offset)."""

    cron: Cron | None = None
    tz: Zone | None = None
    every: Seconds | None = None
    at: When | None = None


class LoopPatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    agent: Id | None = None
    message: Message | None = None
    trigger: TriggerBody | None = None
    session: SessionPolicy | None = None
    missed: Missed | None = None
    end_at: When | None = None
    max_fires: MaxFires | None = None
    callback_url: CallbackUrl | None = None


class LoopBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A new loop; `id` is made when not given."""

    agent: Id
    message: Message
    trigger: TriggerBody
    id: LoopId | None = None
    session: SessionPolicy = "per_loop"
    missed: Missed = "skip"
    enabled: bool = True
    end_at: When | None = None
    max_fires: MaxFires | None = None
    callback_url: CallbackUrl | None = None


class TriggerOut(msgspec.Struct, kw_only=True, omit_defaults=True):
    cron: str | None = None
    tz: str | None = None
    every: int | None = None
    at: str | None = None


class Fire(msgspec.Struct, kw_only=True):
    scheduled_at: int
    run_id: str
    session_key: str
    manual: bool
    status: str
    error: str | None
    events_url: str


class Loop(msgspec.Struct, kw_only=True):
    id: str
    object: str
    agent: str
    message: str
    trigger: TriggerOut
    session: SessionPolicy
    missed: Missed
    enabled: bool
    end_at: str | None
    max_fires: int | None
    callback_url: str | None
    fires_count: int
    next_fire_at: int | None
    fires: list[Fire]
    version: int


class LoopList(msgspec.Struct, kw_only=True):
    data: list[Loop]
    next_cursor: str | None


def _seconds(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def _rfc3339(value: int | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")


def trigger_spec(body: TriggerBody) -> LoopTrigger:
    return LoopTrigger(cron=body.cron, tz=body.tz, every=body.every, at=_seconds(body.at))


def fire_json(fire: FireView) -> Fire:
    return Fire(
        scheduled_at=fire.scheduled_at,
        run_id=fire.run_id,
        session_key=fire.session_key,
        manual=fire.manual,
        status=fire.status,
        error=fire.error,
        events_url=f"/v1/runs/{fire.run_id}/events",
    )


def loop_json(view: LoopView) -> Loop:
    spec = view.spec
    trigger = spec.trigger
    return Loop(
        id=view.id,
        object="loop",
        agent=spec.agent_id,
        message=spec.message,
        trigger=TriggerOut(
            cron=trigger.cron, tz=trigger.tz, every=trigger.every, at=_rfc3339(trigger.at)
        ),
        session=spec.session,
        missed=spec.missed,
        enabled=view.enabled,
        end_at=_rfc3339(spec.end_at),
        max_fires=spec.max_fires,
        callback_url=spec.callback_url,
        fires_count=view.fires_count,
        next_fire_at=view.next_fire_at,
        fires=[fire_json(f) for f in view.fires],
        version=view.version,
    )


def register_loop_routes(routes: Routes, services: Services) -> None:
    def loops() -> Loops:
        found: Loops | None = services.loops
        if found is None:
            raise ApiError(503, "loops are off on this server", headers={"Retry-After": "60"})
        return found

    def actor() -> str:
        return principal().key_id or "local"

    @routes.add("/v1/loops", ["GET"], "read", answers={200: LoopList}, params=[LOOPS_LIMIT, CURSOR])
    async def list_loops() -> Response:
        """Loops in id order, with their next fire and recent fires."""
        page, next_cursor = await loops().list_loops(after=CURSOR.get(), limit=LOOPS_LIMIT.get())
        return page_json([loop_json(v) for v in page], next_cursor)

    @routes.add("/v1/loops", ["POST"], "admin", body=LoopBody, answers={201: Loop})
    async def create_loop() -> Response:
        """Schedule runs of an agent: cron in a time zone, every N seconds, or once at a time."""
        body, _ = await services.read(LoopBody)
        spec = LoopSpec(
            agent_id=body.agent,
            message=body.message,
            trigger=trigger_spec(body.trigger),
            session=body.session,
            missed=body.missed,
            end_at=_seconds(body.end_at),
            max_fires=body.max_fires,
            callback_url=body.callback_url,
        )
        view = await loops().create(body.id, spec, enabled=body.enabled, actor=actor())
        return json_response(to_json(loop_json(view)), 201)

    @routes.add("/v1/loops/<loop_id>", ["GET"], "read", answers={200: Loop})
    async def get_loop(loop_id: str) -> Response:
        """A loop: its next fire time and its last fires with their runs' status (newest first)."""
        return json_response(to_json(loop_json(await loops().get(loop_id))))

    @routes.add("/v1/loops/<loop_id>", ["PATCH"], "admin", body=LoopPatch, answers={200: Loop})
    async def patch_loop(loop_id: str) -> Response:
        """Change some of a loop's fields; a new trigger counts its slots from now."""
        body, _ = await services.read(LoopPatch)
        spec = (await loops().get(loop_id)).spec
        changes: dict[str, object] = {}
        if body.agent is not None:
            changes["agent_id"] = body.agent
        if body.trigger is not None:
            changes["trigger"] = trigger_spec(body.trigger)
        if body.end_at is not None:
            changes["end_at"] = _seconds(body.end_at)
        for name in ("message", "session", "missed", "max_fires", "callback_url"):
            value = getattr(body, name)
            if value is not None:
                changes[name] = value
        spec = msgspec.structs.replace(spec, **changes)
        view = await loops().update(loop_id, spec, actor=actor())
        return json_response(to_json(loop_json(view)))

    @routes.add("/v1/loops/<loop_id>", ["DELETE"], "admin", answers={200: Deleted})
    async def delete_loop(loop_id: str) -> Response:
        """Delete a loop: it fires no more; its fires and runs stay in the log."""
        await loops().delete(loop_id, actor=actor())
        return json_response(to_json(Deleted(id=loop_id, object="loop", deleted=True)))

    @routes.add("/v1/loops/<loop_id>/toggle", ["POST"], "admin", answers={200: Loop})
    async def toggle_loop(loop_id: str) -> Response:
        """Turn a loop off, or back on (its slots then count from now: none are made up)."""
        return json_response(to_json(loop_json(await loops().toggle(loop_id, actor=actor()))))

    @routes.add("/v1/loops/<loop_id>/run", ["POST"], "admin", answers={202: Fire}, runs=True)
    async def run_loop(loop_id: str) -> Response:
        """Fire a loop now, outside its schedule (it need not be enabled)."""
        fire = await loops().run_now(loop_id, actor=actor())
        return json_response(to_json(fire_json(fire)), 202)
