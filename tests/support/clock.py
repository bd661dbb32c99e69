"""A monotonic clock that moves only when a test tells it to (pools, snapshots, caches and
backoffs take one instead of ``time.monotonic``), so that tests step over ages instead of
sleeping through them."""

from __future__ import annotations


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
