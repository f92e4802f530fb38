"""`make demo`: runs the packaged demo (angela_queue/demo), the same as `angela-queue demo`."""

from __future__ import annotations

import signal
import sys

# Ctrl-C during the imports: nothing is started yet, so leave quietly, not with a traceback.
signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))

from angela_queue.demo.run import main  # noqa: E402 - after the handler above

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
