"""``python -m gateway`` under cProfile, for the benchmarks only.

Started by :class:`tests.bench.processes.Gateway` when ``BENCH_PROFILE_DIR`` names a
directory; the profile is written to ``<directory>/gateway-<pid>.prof`` when the gateway
stops (SIGTERM ends ``serve`` normally).
"""

from __future__ import annotations

import cProfile
import os
import sys
from pathlib import Path

from gateway.__main__ import main


def run() -> int:
    out = Path(os.environ["BENCH_PROFILE_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return main(sys.argv[1:])
    finally:
        profiler.disable()
        profiler.dump_stats(out / f"gateway-{os.getpid()}.prof")


if __name__ == "__main__":
    sys.exit(run())
