"""What Linux's ``/proc`` says about a process the tests (or benchmarks) started."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """CPU time (user + system) used by ``pid`` so far; with ``reaped_children``, plus that of
    its children that have exited and been waited for (``/proc/<pid>/stat``)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # after "(comm)", which may hold spaces and parentheses: state is fields[0]; utime,
    # stime, cutime, cstime are fields 11-14
    fields = text[text.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")
