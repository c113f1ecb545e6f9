"""`make bench`: run every benchmark module in turn (`python -m benchmarks [NAME ...]`).

What each benchmark prints is shown live and, after a run of all of them, written to
benchmarks/RESULTS.md with the date and the machine, one section per benchmark, so the next run
has something to compare with. A run of some of them (names given) leaves RESULTS.md alone.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import pkgutil
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from cuelog.runtime import configure_logging

RESULTS = Path(__file__).parent / "RESULTS.md"


class Tee(io.TextIOBase):
    """A text stream that writes through to another and keeps a copy."""

    def __init__(self, target: TextIO) -> None:
        self.target = target
        self.copy = io.StringIO()

    def write(self, text: str) -> int:
        self.target.write(text)
        return self.copy.write(text)

    def flush(self) -> None:
        self.target.flush()


def machine() -> list[str]:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- nproc: {cpus}",
        f"- memory: {memory / 2**30:.1f} GiB",
        f"- python: {platform.python_version()} ({platform.python_implementation()})",
        f"- system: {platform.system()} {platform.release()} {platform.machine()}",
        f"- CUELOG_BENCH_SCALE: {os.environ.get('CUELOG_BENCH_SCALE', '1')}",
    ]


def results_markdown(sections: list[tuple[str, float, str]]) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`python -m benchmarks`). Ratios compare against a baseline",
        "measured in the same run; absolute rates depend on the machine and its load.",
        "",
        *machine(),
        "",
    ]
    for name, seconds, output in sections:
        lines += [f"## {name}", "", f"({seconds:.0f} s)", "", "```", output.rstrip("\n"), "```", ""]
    return "\n".join(lines)


def run_one(name: str) -> tuple[str, bool]:
    """Run one benchmark module; return what it printed and whether it finished."""
    tee = Tee(sys.stdout)
    ok = True
    with contextlib.redirect_stdout(tee):
        try:
            importlib.import_module(f"benchmarks.{name}").main()
        except Exception:
            ok = False
            print(f"FAILED:\n{traceback.format_exc()}", flush=True)
    return tee.copy.getvalue(), ok


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    chosen = [n for n in names if not argv or any(a in n for a in argv)]
    if not chosen:
        print(f"no benchmark matches {argv}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    # The log's own notices (a map grown, a schema migrated) go to stderr, warnings only: what a
    # benchmark prints is its report.
    configure_logging(level="warning")
    sections: list[tuple[str, float, str]] = []
    failed = False
    for name in chosen:
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        output, ok = run_one(name)
        failed = failed or not ok
        sections.append((name, time.perf_counter() - started, output))
    if chosen == names:
        RESULTS.write_text(results_markdown(sections))
        print(f"wrote {RESULTS}", flush=True)
    else:
        print(f"ran {len(chosen)} of {len(names)} benchmarks: {RESULTS.name} left as it was")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
