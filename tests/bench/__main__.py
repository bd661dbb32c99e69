"""``make bench``: every benchmark, printing ratios against baselines measured in the same run.

    python -m tests.bench                      # all of them
    python -m tests.bench http_warm http_raw   # only these (names below)

Prints a summary table at the end and exits non-zero when a target is missed or a benchmark
could not run. The machine's load average is shown beside each benchmark: other work on the
same cores moves the ratios.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable

from tests.bench import (
    events,
    http_listing,
    http_many,
    http_raw,
    http_warm,
    pop3_top,
    report,
    summary,
)

BENCHMARKS: dict[str, Callable[[], bool]] = {
    "summary": summary.run,
    "pop3_top": pop3_top.run,
    "http_listing": http_listing.run,
    "http_warm": http_warm.run,
    "http_raw": http_raw.run,
    "http_many": http_many.run,
    "events": events.run,
}


Result = tuple[str, bool, float, float, float]  # name, ok, seconds, load before, load after


def _table(results: list[Result]) -> None:
    print("\nsummary (load: the 1-minute load average before and after, on all cores)")
    width = max(len(o.what) for o in report.RECORDED) if report.RECORDED else 20
    for name, ok, seconds, load_before, load_after in results:
        print(
            f"  {name:<13} {'PASS' if ok else 'FAIL':<5} {seconds:6.1f} s"
            f"   load {load_before:.1f} -> {load_after:.1f}"
        )
        for outcome in (o for o in report.RECORDED if o.bench == name):
            verdict = "info" if outcome.ok is None else "PASS" if outcome.ok else "FAIL"
            print(f"    {verdict:<5} {outcome.what:<{width}}  {outcome.measured}")


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from: {', '.join(BENCHMARKS)}")
        return 2
    results: list[Result] = []
    for name in names:
        load = os.getloadavg()[0]
        started = time.monotonic()
        try:
            ok = BENCHMARKS[name]()
        except Exception as exc:
            traceback.print_exc()
            ok = report.failed(name, f"error: {type(exc).__name__}: {exc}")
        results.append((name, ok, time.monotonic() - started, load, os.getloadavg()[0]))
    _table(results)
    ok = all(result[1] for result in results)
    print("\nall targets met" if ok else "\nsome targets missed", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
