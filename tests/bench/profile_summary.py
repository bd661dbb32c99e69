"""Where a py-spy profile says the time went: ``python -m tests.bench.profile_summary FILE``.

FILE is py-spy's raw output (``py-spy record --format raw``, one collapsed stack and its
sample count per line), as written with ``BENCH_PYSPY_DIR`` (see ``processes.py``).
Prints, in percent of the samples spent in the event loop's callbacks (idle waiting
excluded), the functions with the most inclusive time and the most self time.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def _name(frame: str) -> str:
    """``func (path/file.py:123)`` -> ``func (path/file.py)``."""
    return _LINE.sub(")", frame.strip())


def summarize(path: Path, top: int) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    busy = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_name(f) for f in stack.split(";")]
        if not any(f.startswith("Handle._run ") for f in frames):
            continue  # outside the loop's callbacks: waiting in epoll, start-up, shutdown
        samples = int(count)
        busy += samples
        for name in set(frames):
            inclusive[name] += samples
        own[frames[-1]] += samples
    if not busy:
        return "no samples in the event loop's callbacks"
    out = [f"{busy} samples in event-loop callbacks; inclusive:"]
    out += [f"  {100 * n / busy:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    out.append("self:")
    out += [f"  {100 * n / busy:5.1f}%  {name}" for name, n in own.most_common(top // 2)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=50)
    args = parser.parse_args()
    print(summarize(args.file, args.top))


if __name__ == "__main__":
    main()
