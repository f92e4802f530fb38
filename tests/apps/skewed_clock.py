"""`angela-queue` with this process's wall clock shifted by ANGELA_QUEUE_TEST_CLOCK_SKEW_S.

    python -m tests.apps.skewed_clock worker --app tests.apps.sample_app:app …

``time.time()``/``time.time_ns()`` and ``datetime.now()``/``utcnow()``/``today()`` are
shifted before angela_queue is imported, so every wall-clock read of the worker (and of
its reaper, which runs in the worker) is off by the skew, as on a host whose clock
drifted. Monotonic clocks are left alone, as the kernel does.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import time

SKEW_S = float(os.environ.get("ANGELA_QUEUE_TEST_CLOCK_SKEW_S", "0"))
_SKEW = _dt.timedelta(seconds=SKEW_S)
_real_time, _real_time_ns = time.time, time.time_ns


class SkewedDateTime(_dt.datetime):
    @classmethod
    def now(cls, tz: _dt.tzinfo | None = None) -> SkewedDateTime:
        return super().now(tz) + _SKEW

    @classmethod
    def utcnow(cls) -> SkewedDateTime:
        return super().now(_dt.UTC).replace(tzinfo=None) + _SKEW

    @classmethod
    def today(cls) -> SkewedDateTime:
        return cls.now()


def install() -> None:
    _dt.datetime = SkewedDateTime  # type: ignore[misc]
    time.time = lambda: _real_time() + SKEW_S
    time.time_ns = lambda: _real_time_ns() + int(SKEW_S * 1e9)


if __name__ == "__main__":
    install()
    from angela_queue.cli import main

    sys.argv[0] = "angela-queue"
    main()
