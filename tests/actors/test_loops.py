"""Loops: triggers (cron in a time zone, interval, one time), fires recorded before their runs,
one run per slot across restarts and crashes, and the missed-slot policies. Time is trio's
autojump clock; the loops read wall time as a fixed base plus trio's clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import trio
import trio.testing

from cuelog.actors import DOMAIN_CODEC, Domain, LoopSpec, LoopTrigger, open_domain, open_loops
from cuelog.actors._events import LoopFired, RunStarted
from cuelog.actors._loops import Loops, _Loop, next_slot
from cuelog.runtime import EventLog, open_event_log
from tests.actors.domain_support import make_settings

PARIS = ZoneInfo("Europe/Paris")
# Noon in Paris the day before clocks go forward (29 March 2026, 02:00 -> 03:00).
BASE = int(datetime(2026, 3, 28, 12, 0, tzinfo=PARIS).timestamp())


def wall() -> float:
    return BASE + trio.current_time()


def spec(trigger: LoopTrigger, **fields: object) -> LoopSpec:
    return LoopSpec(agent_id="default", message="tick", trigger=trigger, **fields)  # type: ignore[arg-type]


@asynccontextmanager
async def loops_over(log: EventLog, *, schedule: bool = True) -> AsyncIterator[Loops]:
    async with (
        open_domain(log, make_settings()) as domain,
        open_loops(domain, now=wall, schedule=schedule) as loops,
    ):
        yield loops


def runs_started(log: EventLog) -> list[tuple[str, str | None]]:
    """(run id, envelope actor) of every RunStarted in the log."""
    out = []
    for record in log.read_all(0, 100_000):
        if record.type == "RunStarted":
            event = DOMAIN_CODEC.decode(record.type, record.data)
            assert isinstance(event, RunStarted)
            out.append((event.run_id, record.actor))
    return out


def fires(log: EventLog) -> list[LoopFired]:
    out = []
    for record in log.read_all(0, 100_000):
        if record.type == "LoopFired":
            event = DOMAIN_CODEC.decode(record.type, record.data)
            assert isinstance(event, LoopFired)
            out.append(event)
    return out


async def settle(domain: Domain, run_ids: list[str]) -> list[str]:
    return [(await domain.wait_run(run_id)).status for run_id in run_ids]


def paris(slot: int) -> str:
    return datetime.fromtimestamp(slot, PARIS).isoformat()


# -- triggers ------------------------------------------------------------------------------


def test_cron_in_a_time_zone_across_spring_forward_and_fall_back() -> None:
    """A daily 02:30 Paris slot fires at 03:00 the night 02:30 does not exist, and once (not
    twice) the night 02:30 happens twice."""
    trigger = LoopTrigger(cron="30 2 * * *", tz="Europe/Paris")
    slots, after = [], BASE
    for _ in range(3):
        slot = next_slot(trigger, after, BASE)
        assert slot is not None
        slots.append(paris(slot))
        after = slot
    assert slots == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    autumn = int(datetime(2026, 10, 24, 12, 0, tzinfo=PARIS).timestamp())
    slots, after = [], autumn
    for _ in range(2):
        slot = next_slot(trigger, after, autumn)
        assert slot is not None
        slots.append(paris(slot))
        after = slot
    assert slots == ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]


def test_interval_and_one_shot_slots() -> None:
    """Interval slots count from the anchor; a one-time trigger has one slot, then none."""
    assert next_slot(LoopTrigger(every=10), 100, 100) == 110
    assert next_slot(LoopTrigger(every=10), 115, 100) == 120
    assert next_slot(LoopTrigger(at=150), 100, 100) == 150
    assert next_slot(LoopTrigger(at=150), 150, 100) is None


# -- firing ---------------------------------------------------------------------------------


async def test_interval_loop_fires_each_slot_once_and_its_runs_name_the_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every 10 s for 35 s: three fires on their slots, three completed runs whose events are
    recorded with the loop as the actor, and the view shows the next slot and the history."""
    async with open_event_log("memory:") as log, loops_over(log) as loops:
        created = await loops.create("tick", spec(LoopTrigger(every=10)))
        anchor = BASE
        assert created.next_fire_at == anchor + 10
        await trio.sleep(35)
        recorded = fires(log)
        assert [f.scheduled_at for f in recorded] == [anchor + 10, anchor + 20, anchor + 30]
        statuses = await settle(loops.domain, [f.run_id for f in recorded])
        assert statuses == ["completed"] * 3
        assert sorted(runs_started(log)) == sorted((f.run_id, "loop:tick") for f in recorded)
        view = await loops.get("tick")
        assert view.next_fire_at == anchor + 40
        assert view.fires_count == 3
        assert [f.scheduled_at for f in view.fires] == [anchor + 30, anchor + 20, anchor + 10]
        assert {f.status for f in view.fires} == {"completed"}
        # per_loop: every fire goes to the loop's one session
        assert {f.session_key for f in view.fires} == {"loop-tick"}


async def test_one_shot_fires_once_then_has_no_next_fire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A one-time trigger fires at its time and never again; per_fire gives it its own session."""
    async with open_event_log("memory:") as log, loops_over(log) as loops:
        await loops.create("once", spec(LoopTrigger(at=BASE + 100), session="per_fire"))
        await trio.sleep(99)
        assert fires(log) == []
        await trio.sleep(500)
        [fire] = fires(log)
        assert fire.scheduled_at == BASE + 100
        assert fire.session_key == f"loop-once-{BASE + 100}"
        view = await loops.get("once")
        assert view.next_fire_at is None


async def test_cron_loop_fires_on_local_wall_time_through_a_dst_change(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A cron loop in Europe/Paris, run for three days across the spring change, fires at the
    slots the time zone gives."""
    async with open_event_log("memory:") as log, loops_over(log) as loops:
        await loops.create("nightly", spec(LoopTrigger(cron="30 2 * * *", tz="Europe/Paris")))
        await trio.sleep(3 * 86400)
        assert [paris(f.scheduled_at) for f in fires(log)] == [
            "2026-03-29T03:00:00+02:00",
            "2026-03-30T02:30:00+02:00",
            "2026-03-31T02:30:00+02:00",
        ]


async def test_max_fires_and_end_time_stop_a_loop(autojump_clock: trio.testing.MockClock) -> None:
    """max_fires counts scheduled fires; no slot fires after end_at."""
    async with open_event_log("memory:") as log, loops_over(log) as loops:
        await loops.create("three", spec(LoopTrigger(every=5), max_fires=3))
        await loops.create("ends", spec(LoopTrigger(every=7), end_at=BASE + 20))
        await trio.sleep(100)
        by_loop: dict[str, int] = {}
        for fire in fires(log):
            loop_id = fire.session_key.removeprefix("loop-")
            by_loop[loop_id] = by_loop.get(loop_id, 0) + 1
        assert by_loop == {"three": 3, "ends": 2}
        assert (await loops.get("three")).next_fire_at is None


async def test_toggle_off_stops_fires_and_on_again_does_not_make_up_slots(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Off, a loop does not fire; back on, its slots count from then (no catch-up burst)."""
    async with open_event_log("memory:") as log, loops_over(log) as loops:
        await loops.create("t", spec(LoopTrigger(every=10)))
        await trio.sleep(15)
        assert len(fires(log)) == 1
        assert not (await loops.toggle("t")).enabled
        await trio.sleep(100)
        assert len(fires(log)) == 1
        view = await loops.toggle("t")
        assert view.enabled
        assert view.next_fire_at == int(wall()) + 10
        await trio.sleep(11)
        assert len(fires(log)) == 2


async def test_run_now_fires_outside_the_schedule(autojump_clock: trio.testing.MockClock) -> None:
    """`run` fires a disabled loop at once; it is not a slot and does not count to max_fires."""
    async with open_event_log("memory:") as log, loops_over(log) as loops:
        await loops.create("m", spec(LoopTrigger(every=3600), max_fires=1), enabled=False)
        fire = await loops.run_now("m")
        assert fire.manual
        assert (await loops.domain.wait_run(fire.run_id)).status == "completed"
        view = await loops.get("m")
        assert view.fires_count == 0
        assert [f.run_id for f in view.fires] == [fire.run_id]
        assert view.fires[0].status == "completed"


# -- exactly once --------------------------------------------------------------------------


async def test_restarts_within_a_slot_never_fire_it_twice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Three scheduler restarts in a row right after a fire leave one fire and one run."""
    async with open_event_log("memory:") as log:
        async with loops_over(log) as loops:
            await loops.create("r", spec(LoopTrigger(every=60)))
            await trio.sleep(61)
        for _ in range(3):
            async with loops_over(log):
                await trio.sleep(1)
        assert len(fires(log)) == 1
        assert len(runs_started(log)) == 1


async def test_fire_recorded_before_a_crash_gets_its_run_once_on_the_next_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A LoopFired whose run never started (the process died between the two) has its run
    started by the next start-up, and only once however many start-ups follow."""
    async with open_event_log("memory:") as log:
        async with loops_over(log, schedule=False) as loops:
            await loops.create("c", spec(LoopTrigger(every=3600)))
        fired = LoopFired(scheduled_at=BASE + 3600, run_id="run_crashed", session_key="loop-c")
        await log.append("loop:c", [fired], actor="loop:c")
        assert runs_started(log) == []
        for _ in range(3):
            async with loops_over(log) as loops:
                await trio.sleep(1)
        assert runs_started(log) == [("run_crashed", "loop:c")]
        async with loops_over(log, schedule=False) as loops:
            view = await loops.get("c")
            assert view.fires[0].run_id == "run_crashed"
            assert (await loops.domain.wait_run("run_crashed")).status == "completed"
            # the recorded slot is taken: the next one is an hour later
            assert view.next_fire_at == BASE + 7200


@pytest.mark.parametrize(("missed", "expected"), [("skip", 0), ("run_once", 1)])
async def test_slots_missed_while_down_follow_the_loop_policy(
    autojump_clock: trio.testing.MockClock, missed: str, expected: int
) -> None:
    """Down for 3.5 hours over an hourly loop: `skip` fires nothing for the missed slots,
    `run_once` fires one run (for the latest); both go on at the next slot."""
    async with open_event_log("memory:") as log:
        async with loops_over(log) as loops:
            await loops.create("h", spec(LoopTrigger(every=3600), missed=missed))
        await trio.sleep(3.5 * 3600)
        async with loops_over(log) as loops:
            await trio.sleep(1)
            assert [f.scheduled_at for f in fires(log)] == [BASE + 3 * 3600][:expected]
            assert (await loops.get("h")).next_fire_at == BASE + 4 * 3600
            await trio.sleep(3600)
            assert len(fires(log)) == expected + 1


async def test_a_long_lived_loop_starts_from_its_snapshot_with_the_same_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After 250 fires the loop's fold is snapshotted; a restart reads only the events after
    the snapshot and shows what a fold of the whole stream shows."""
    async with open_event_log("memory:") as log:
        async with loops_over(log) as loops:
            await loops.create("fast", spec(LoopTrigger(every=1)))
            await trio.sleep(250.5)
            await loops.toggle("fast")
            before = await loops.get("fast")
        snapshot = log.load_snapshot("loop:fast")
        assert snapshot is not None and snapshot[0] == 200
        assert before.fires_count == 250
        async with loops_over(log, schedule=False) as loops:
            after = await loops.get("fast")
            whole = _Loop("fast")
            for record in log.read_stream("loop:fast"):
                whole.apply(DOMAIN_CODEC.decode(record.type, record.data))
        assert after == before
        assert (whole.version, whole.scheduled, whole.last_slot) == (
            after.version,
            after.fires_count,
            BASE + 250,
        )
        assert [f.event for f in whole.fires] == [f for f in fires(log)[-len(whole.fires) :]]
