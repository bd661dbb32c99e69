"""Prints how many inputs each fuzz property ran (see tests/fuzz/profiles.py)."""

from __future__ import annotations

import pytest

from tests.fuzz import profiles

LONG_TARGET = 100_000


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not profiles.COUNTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section(f"fuzz inputs (profile {profiles.MODE})")
    for name, count in sorted(profiles.COUNTS.items()):
        write(f"  {name:<40} {count:>9,}")
    total = sum(profiles.COUNTS.values())
    write(f"  {'total':<40} {total:>9,}")
    if profiles.SEED is not None:
        write(f"  seed: POP3GW_FUZZ_SEED={profiles.SEED}")
    if profiles.LONG and total < LONG_TARGET:
        write(f"  note: fewer than {LONG_TARGET:,} inputs (a subset of the properties ran?)")
