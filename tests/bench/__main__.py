"""``make bench``: every benchmark, printing ratios against baselines measured in the same run.

Exits non-zero when a ratio misses its target.
"""

from __future__ import annotations

import sys

from tests.bench import pop3_top, summary


def main() -> int:
    ok = summary.run()
    ok = pop3_top.run() and ok
    print("\nall targets met" if ok else "\nsome targets missed", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
