"""The projector: a process of its own that keeps an LMDB data dir's read models current, so
the server's event loop does not read and apply the log's batches (the work goes to another
core). The server keeps the read models inline (in its own loop) until a projector it started
says they are live, hands over, and takes them back inline whenever that process ends, until it
starts another. Nothing depends on the projector being there: both write the same store, whose
checkpoints (read under LMDB's write lock) make each event applied exactly once.

When: `mode` "process" starts one at once; "auto" (the default) once the inline read models
have taken `AUTO_SHARE` of a core over `AUTO_WINDOW` seconds (an idle or small server never
needs a second process); "inline" never.

The two processes talk over the projector's pipes, in lines:
- server → projector (stdin): one byte `w` each time a reader starts to wait for the head; the
  projector reads and applies at once instead of after its gathering pause. End of file (the
  server stopped, or died, even by SIGKILL): the projector syncs its store and exits.
- projector → server (stdout): a JSON `Report` after each batch it applied (and when a phase
  changes): every projection's phase and the CPU seconds the projector has used. The
  checkpoints themselves the server reads from the shared store.

Run alone, `python -m cuelog.actors._projector_process DATA_DIR` keeps a data dir's read models
current until its standard input ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal, final

import msgspec
import structlog
import trio

from cuelog.runtime import (
    Projection,
    ProjectionGroup,
    ProjectionPhase,
    ProjectionRunner,
    configure_logging,
    open_event_log,
    open_projection_store,
)

ProjectorMode = Literal["auto", "process", "inline"]

logger = structlog.get_logger("cuelog.projector")

# "auto": the share of one core the inline read models must take, over a window of this many
# seconds, for the server to move them to a projector process.
AUTO_SHARE: Final = 0.02
AUTO_WINDOW: Final = 5.0

# How long a stopping server waits for its projector to sync its store and exit.
STOP_SECONDS: Final = 5.0

# After a projector ends unexpectedly: the first pause before the next, doubled each time one
# lives less than `STEADY_SECONDS`, up to `RESTART_MAX`.
RESTART_MIN: Final = 1.0
RESTART_MAX: Final = 60.0
STEADY_SECONDS: Final = 30.0

# The projector reports at least this often while a phase is changing.
REPORT_SECONDS: Final = 0.1

# A projector that has not reported for this long while it had work to do is stuck: killed
# (before its first report, which follows its start-up imports: `START_SECONDS`).
STALL_SECONDS: Final = 10.0
START_SECONDS: Final = 60.0

WANT: Final = b"w"


class Report(msgspec.Struct, frozen=True):
    """What the projector says after a batch."""

    phases: dict[str, ProjectionPhase]
    cpu: float


_encode_report = msgspec.json.Encoder().encode
_decode_report = msgspec.json.Decoder(Report).decode


def projector_command(data_dir: Path) -> list[str]:
    return [sys.executable, "-P", "-m", "cuelog.actors._projector_process", str(data_dir)]


# -- in the server ------------------------------------------------------------------------------


@final
class Projector:
    """Keeps a server's read models current: inline, or through a projector process."""

    def __init__(
        self,
        group: ProjectionGroup,
        data_dir: Path,
        mode: ProjectorMode,
        *,
        command: Sequence[str] | None = None,
    ) -> None:
        self.group = group
        self.data_dir = data_dir
        self.mode: ProjectorMode = mode
        self.command = list(command) if command is not None else projector_command(data_dir)
        self.pid: int | None = None  # the projector process, while one runs
        self.through_process = False  # handed over: the process applies, the server does not
        self.starts = 0  # projector processes started
        self._cpu_ended = 0.0  # CPU seconds of the projector processes that have ended
        self._cpu_current = 0.0
        self._inline_running = False
        self._inline_stopped = trio.Event()
        self._wanted = trio.Event()
        self._last_report = 0.0  # when the projector last reported (trio's clock)
        self._reported = False  # the projector running now has reported
        for runner in group.runners:
            runner.on_wait = self._want

    def cpu_seconds(self) -> float:
        """CPU seconds the projector processes have used."""
        return self._cpu_ended + self._cpu_current

    def _want(self) -> None:
        self.group.want()
        self._wanted.set()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Apply inline at once; per `mode`, start projectors and hand over to them, taking
        the read models back whenever one ends; until cancelled."""
        async with trio.open_nursery() as nursery:
            await self._start_inline(nursery)
            task_status.started()
            try:
                if self.mode == "inline":
                    await trio.sleep_forever()
                quick = 0  # projectors in a row that ended before `STEADY_SECONDS`
                while True:
                    if self.mode == "auto":
                        await self._until_busy()
                    started = trio.current_time()
                    await self._through_a_process(nursery)
                    lived = trio.current_time() - started
                    quick = 0 if lived >= STEADY_SECONDS else quick + 1
                    pause = min(RESTART_MIN * 2 ** max(quick - 1, 0), RESTART_MAX)
                    logger.warning(
                        "projector process ended: the read models are kept in the server "
                        "until another starts",
                        restart_in=pause,
                    )
                    await trio.sleep(pause)
            finally:
                nursery.cancel_scope.cancel()
                if not self._inline_running:
                    for runner in self.group.runners:
                        if runner.phase != "failed":
                            runner.observed("stopped")

    async def _start_inline(self, nursery: trio.Nursery) -> None:
        if self._inline_running:
            return
        self._inline_running = True
        self._inline_stopped = trio.Event()

        async def inline(task_status: trio.TaskStatus[None]) -> None:
            try:
                # Synced here while the server applies; a projector syncs what it applies.
                async with trio.open_nursery() as syncing:
                    syncing.start_soon(self.group.store.keep_synced)
                    await self.group.run(task_status)
                    syncing.cancel_scope.cancel()
            finally:
                self._inline_running = False
                self._inline_stopped.set()

        await nursery.start(inline)

    async def _until_busy(self) -> None:
        """Wait until the inline read models take `AUTO_SHARE` of a core over a window."""
        while True:
            before, started = self.group.cpu_seconds(), time.monotonic()
            await trio.sleep(AUTO_WINDOW)
            share = (self.group.cpu_seconds() - before) / (time.monotonic() - started)
            if share >= AUTO_SHARE and self._inline_running:
                logger.info("moving the read models to a projector process", share=round(share, 3))
                return

    async def _through_a_process(self, nursery: trio.Nursery) -> None:
        """Start a projector, hand over once it reports every projection live, follow its
        reports until it ends, then take the read models back inline."""
        try:
            process = await trio.lowlevel.open_process(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=True,  # a terminal's ^C is the server's to handle
            )
        except OSError as exc:
            logger.error("projector process could not start", error=str(exc))
            return
        self.starts += 1
        self.pid = process.pid
        self._last_report = trio.current_time()
        self._reported = False
        assert process.stdin is not None and process.stdout is not None
        try:
            async with trio.open_nursery() as pipes:
                pipes.start_soon(self._send_wants, process.stdin)
                pipes.start_soon(self._watch, process)
                await self._follow_reports(process.stdout)
                pipes.cancel_scope.cancel()
        finally:
            self.through_process = False
            self.pid = None
            self._cpu_ended += self._cpu_current
            self._cpu_current = 0.0
            with trio.CancelScope(shield=True):
                await _stop(process)
                if not nursery.cancel_scope.cancel_called:
                    await self._start_inline(nursery)

    async def _watch(self, process: trio.Process) -> None:
        """Kill a projector that has said nothing for `STALL_SECONDS` while it had work to do
        (it has not taken over yet, or a read model lags the log): it is stuck, and the
        server applies the batches itself until another has started."""
        while True:
            await trio.sleep(STALL_SECONDS / 4)
            quiet = trio.current_time() - self._last_report
            if quiet < (STALL_SECONDS if self._reported else START_SECONDS):
                continue
            if self.through_process and not any(
                status.lag > 0 and status.phase != "failed"
                for status in (runner.status() for runner in self.group.runners)
            ):
                continue  # caught up, nothing to say
            logger.error(
                "projector process is stuck: killing it", pid=process.pid, quiet=round(quiet, 1)
            )
            process.kill()
            return

    async def _send_wants(self, stdin: trio.abc.SendStream) -> None:
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()
            if self.through_process:
                try:
                    await stdin.send_all(WANT)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # the projector has gone: its reports end, which says so

    async def _follow_reports(self, stdout: trio.abc.ReceiveStream) -> None:
        runners = {runner.name: runner for runner in self.group.runners}
        pending = b""
        async for chunk in stdout:
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                try:
                    report = _decode_report(line)
                except msgspec.DecodeError:  # not a report (a stray print): skipped
                    logger.warning("projector said something unexpected", line=line[:200])
                    continue
                self._cpu_current = report.cpu
                self._last_report = trio.current_time()
                self._reported = True
                if not self.through_process:
                    if not all(p in ("live", "failed") for p in report.phases.values()):
                        continue
                    self.group.hand_over()
                    await self._inline_stopped.wait()
                    self.through_process = True
                    logger.info("read models kept by a projector process", pid=self.pid)
                    if any(runner.waiting for runner in runners.values()):
                        self._wanted.set()  # a reader asked the server: ask the projector
                for name, phase in report.phases.items():
                    runner = runners.get(name)
                    if runner is not None:
                        runner.observed(phase)


async def _stop(process: trio.Process) -> None:
    """End of input tells the projector to sync and exit; if it has not within
    `STOP_SECONDS`, it is killed (its store is still consistent: each batch is a transaction,
    and the commits it did not sync are in the system's cache)."""
    assert process.stdin is not None
    await process.stdin.aclose()
    with trio.move_on_after(STOP_SECONDS):
        await process.wait()
    if process.returncode is None:
        logger.warning("projector did not stop in time: killing it", pid=process.pid)
        process.kill()
        await process.wait()
    if process.stdout is not None:
        await process.stdout.aclose()


# -- the projector process ----------------------------------------------------------------------


async def keep_current(
    data_dir: Path,
    projections: Sequence[Projection],
    stdin: trio.abc.ReceiveStream,
    stdout: trio.abc.SendStream,
) -> None:
    """Keep `projections` of the LMDB log in `data_dir` current until `stdin` ends."""
    async with (
        open_event_log(data_dir, readonly=True) as log,
        open_projection_store(data_dir) as store,
    ):
        runners = [ProjectionRunner(log, store, p) for p in projections]
        applied = trio.Event()

        def on_applied() -> None:
            applied.set()

        group = ProjectionGroup(runners, applied=on_applied)

        async def report() -> None:
            nonlocal applied
            said: dict[str, ProjectionPhase] = {}
            while True:
                with trio.move_on_after(REPORT_SECONDS):
                    await applied.wait()
                was_applied, applied = applied.is_set(), trio.Event()
                phases = {runner.name: runner.phase for runner in runners}
                if was_applied or phases != said:
                    line = _encode_report(Report(phases, time.process_time())) + b"\n"
                    await stdout.send_all(line)
                    said = phases

        async def listen() -> None:
            async for chunk in stdin:
                if WANT in chunk:
                    log.poll_now()
                    group.want()

        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            nursery.start_soon(store.keep_synced)
            nursery.start_soon(report)
            await listen()
            nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m cuelog.actors._projector_process DATA_DIR", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server says when to stop
    configure_logging()
    from cuelog.actors._read_models import domain_projections  # (which imports this module)

    async def serve() -> None:
        stdin = trio.lowlevel.FdStream(os.dup(0))
        stdout = trio.lowlevel.FdStream(os.dup(1))
        async with stdin, stdout:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await keep_current(Path(args[0]), domain_projections(), stdin, stdout)

    trio.run(serve)
    return 0
