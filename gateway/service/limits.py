"""Limits on what one mailbox's callers can make the gateway do: failed logins, and new
logins asked for with ``fresh``."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from .errors import LoginThrottledError


class LoginThrottle:
    """Counts failed logins per mailbox (upstream + user, never the password) and refuses to
    try again after ``max_failures`` within ``window`` seconds, until the oldest of them
    leaves the window. Providers block addresses that keep failing; one misconfigured client
    must not get the gateway (and every other user behind it) blocked.

    A credential that last succeeded for the mailbox (kept as a keyed digest, never in
    clear) is still let through while it is throttled, so that someone sending wrong
    passwords cannot lock the mailbox's owner out. Bounded in size."""

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 300.0,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_failures
        self._window = window
        self._max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        self._good: OrderedDict[str, str] = OrderedDict()
        self._in_flight: dict[str, int] = {}

    def begin(self, key: str, credential: str) -> bool:
        """Before a login: raise while throttled, counting logins still in flight as
        failures to come (a concurrent burst of wrong passwords must not all reach the
        server). Returns whether this attempt was counted; pass that to :meth:`end`."""
        if self._good.get(key) == credential:
            return False  # the owner's known-good credential is never held back
        now = self._clock()
        recent = [t for t in self._failures.get(key, ()) if now - t < self._window]
        if len(recent) + self._in_flight.get(key, 0) >= self._max:
            wait = recent[0] + self._window - now if recent else 1.0
            raise LoginThrottledError(max(1.0, wait))
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        return True

    def end(self, key: str, counted: bool, outcome: str, credential: str) -> None:
        """After a login: ``outcome`` is ``ok``, ``auth`` (credentials refused) or other."""
        if counted:
            left = self._in_flight.get(key, 1) - 1
            if left > 0:
                self._in_flight[key] = left
            else:
                self._in_flight.pop(key, None)
        if outcome == "ok":
            self.succeeded(key, credential)
        elif outcome == "auth":
            self.failed(key)

    def failed(self, key: str) -> None:
        now = self._clock()
        recent = [t for t in self._failures.pop(key, []) if now - t < self._window]
        recent.append(now)
        self._failures[key] = recent[-self._max :]
        while len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, key: str, credential: str) -> None:
        self._failures.pop(key, None)
        self._good.pop(key, None)
        self._good[key] = credential
        while len(self._good) > self._max_keys:
            self._good.popitem(last=False)


class FreshLogins:
    """Rations new logins asked for with ``fresh``: at most one per mailbox (``key``) per
    ``min_interval`` seconds. A caller that asks again sooner is served the newest snapshot
    instead (at most ``min_interval`` old, and its ``snapshot_at`` says so): a client that
    loops on ``?fresh=true`` cannot make the gateway log in to the provider in a loop.
    Bounded in size (the least recently used mailboxes are forgotten)."""

    def __init__(
        self,
        min_interval: float,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._min = min_interval
        self._max_keys = max_keys
        self._clock = clock
        self._last: OrderedDict[str, float] = OrderedDict()

    def claim(self, key: str) -> bool:
        """Whether a new login for ``key`` may happen now (and if so, it counts from now)."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._min:
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self._max_keys:
            self._last.popitem(last=False)
        return True
