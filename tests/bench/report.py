"""What every benchmark reports: one line per target, collected for the final summary table.

A benchmark calls :func:`target` once per target; the line printed looks like
``  target: <what>: <measured> PASS``. ``python -m tests.bench`` prints every recorded
target again at the end, in one table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    bench: str
    what: str
    measured: str
    ok: bool | None  #: None: reported, no target


RECORDED: list[Outcome] = []


def target(bench: str, what: str, measured: str, ok: bool) -> bool:
    """Print and record one target; return ``ok``."""
    print(f"  target: {what}: {measured} {'PASS' if ok else 'FAIL'}", flush=True)
    RECORDED.append(Outcome(bench, what, measured, ok))
    return ok


def info(bench: str, what: str, measured: str) -> None:
    """Print and record a number that has no target (shown in the summary table)."""
    print(f"  info: {what}: {measured}", flush=True)
    RECORDED.append(Outcome(bench, what, measured, None))


def failed(bench: str, why: str) -> bool:
    """Record a benchmark that could not measure (a missing tool, an error): a miss."""
    print(f"  {bench}: {why} FAIL", flush=True)
    RECORDED.append(Outcome(bench, "ran to the end", why, False))
    return False
