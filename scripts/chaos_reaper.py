"""A reaper process with a small batch size, so that racing reapers interleave row by row
(``angela-queue reap`` takes up to 1,000 rows per statement). Runs until SIGTERM.

    python -m scripts.chaos_reaper DSN HEARTBEAT_TIMEOUT_S INTERVAL_S BATCH_SIZE
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from angela_queue.reaper import Reaper, ReaperConfig
from angela_queue.watchdog import set_on_signals


def main(argv: list[str]) -> int:
    dsn, timeout_s, interval_s, batch = argv
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = ReaperConfig(
        heartbeat_timeout_s=float(timeout_s), interval_s=float(interval_s), batch_size=int(batch)
    )
    stop = threading.Event()
    set_on_signals(stop, signal.SIGTERM)
    Reaper(config, dsn).run_forever(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
