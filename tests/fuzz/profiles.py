"""Hypothesis profiles and input budgets for the fuzz tests.

``POP3GW_FUZZ`` selects the profile:

- unset or ``default``: a short, derandomized run that is part of the normal test suite;
- ``long``: what ``make fuzz`` runs, at least 100,000 generated inputs over all properties,
  with a random seed (printed at the end; ``POP3GW_FUZZ_SEED=<n>`` replays a run).

Every property counts the inputs it ran (:func:`ran`); the counts are printed at the end of
the session by ``tests/fuzz/conftest.py``.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, seed, settings

MODE = os.environ.get("POP3GW_FUZZ", "default").strip().lower() or "default"
if MODE not in ("default", "long"):
    raise RuntimeError(f"POP3GW_FUZZ must be 'default' or 'long', not {MODE!r}")
LONG = MODE == "long"

_SUPPRESSED = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.large_base_example,
]
settings.register_profile(
    "pop3gw-fuzz-default",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=_SUPPRESSED,
)
settings.register_profile(
    "pop3gw-fuzz-long",
    derandomize=False,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=_SUPPRESSED,
)
_PROFILE = settings.get_profile(f"pop3gw-fuzz-{MODE}")

#: The seed of a long run (derandomized default runs need none).
SEED: int | None = None
if LONG:
    SEED = int(os.environ.get("POP3GW_FUZZ_SEED") or random.SystemRandom().getrandbits(32))

#: Inputs each property ran, by property name.
COUNTS: Counter[str] = Counter()
#: Each property's budget in the long profile (their sum is the long run's size).
LONG_BUDGETS: dict[str, int] = {}

F = TypeVar("F", bound=Callable[..., Any])


def budget(name: str, *, default: int, long: int) -> Callable[[F], F]:
    """The profile's settings with ``max_examples`` for this property (and the long run's
    seed); apply it below ``@given``."""
    LONG_BUDGETS[name] = long

    def apply(test: F) -> F:
        configured = settings(_PROFILE, max_examples=long if LONG else default)(test)
        if SEED is not None:
            configured = seed(SEED)(configured)
        return configured

    return apply


def ran(name: str) -> None:
    """Count one input of property ``name``."""
    COUNTS[name] += 1
