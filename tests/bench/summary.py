"""How fast `summarize` reads ``TOP n 0`` output (part of ``make bench``).

The listing path summarises up to 500 header sections per request. The baseline, measured
in the same run, is the standard library's `BytesHeaderParser` (compat32), which only splits
the fields and decodes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.parser import BytesHeaderParser
from email.policy import compat32

from gateway.mail import summarize
from tests.bench import report
from tests.support.corpus import simple_message


def header_sections(count: int = 500) -> list[bytes]:
    """`count` realistic header sections (Received, DKIM, ... about 1.8 KB each)."""
    out = []
    for i in range(count):
        raw = simple_message(i)
        out.append(raw[: raw.index(b"\r\n\r\n") + 4])
    return out


def per_item_us(parse: Callable[[bytes], object], items: list[bytes], rounds: int = 7) -> float:
    """The best of `rounds` passes over `items`, in microseconds per item."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for item in items:
            parse(item)
        best = min(best, time.perf_counter() - start)
    return best / len(items) * 1e6


def run() -> bool:
    """Print the ratio; the target is to stay under 1.0 (faster than splitting alone)."""
    sections = header_sections()
    average = sum(map(len, sections)) / len(sections)
    ours = per_item_us(summarize, sections)
    baseline = per_item_us(BytesHeaderParser(policy=compat32).parsebytes, sections)
    print(f"\nsummarize: {len(sections)} header sections, {average:.0f} octets on average")
    print(f"summarize:                     {ours:6.1f} us per section")
    print(f"BytesHeaderParser (split only): {baseline:6.1f} us per section")
    return report.target(
        "summary",
        "summarize < the split-only baseline",
        f"{ours / baseline:.2f}x",
        ours < baseline,
    )
