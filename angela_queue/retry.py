"""Retry policy: pure functions, no I/O."""

from __future__ import annotations

import random
from datetime import datetime, timedelta


def backoff_s(
    attempt: int, base_s: float, max_s: float, rand: random.Random | None = None
) -> float:
    """Exponential backoff with full jitter: uniform in [d/2, d], d = base × 2^(attempt−1).

    Half the delay is kept so retries never bunch at zero; the other half is spread so that
    many tasks failing together (a downstream outage) do not come back together.
    """
    delay = min(max_s, base_s * 2.0 ** max(0, attempt - 1))
    r = rand.random() if rand is not None else random.random()
    return delay / 2 + r * delay / 2


def next_attempt_in(
    attempts: int,
    max_attempts: int,
    base_s: float,
    max_s: float,
    delay_s: float | None = None,
    rand: random.Random | None = None,
) -> float | None:
    """Seconds until the next attempt, or None when the task has used all its attempts.

    A delay, not a time: the database adds it to its own clock (task_fail_many), so a
    worker whose clock is off never makes a retry early or late.
    """
    if attempts >= max_attempts:
        return None
    return backoff_s(attempts, base_s, max_s, rand) if delay_s is None else max(0.0, delay_s)


def next_attempt_at(
    attempts: int,
    max_attempts: int,
    now: datetime,
    base_s: float,
    max_s: float,
    delay_s: float | None = None,
    rand: random.Random | None = None,
) -> datetime | None:
    """When to run the next attempt counted from ``now``, or None when none is left."""
    delay = next_attempt_in(attempts, max_attempts, base_s, max_s, delay_s, rand)
    return None if delay is None else now + timedelta(seconds=delay)
