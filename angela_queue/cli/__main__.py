"""`python -m angela_queue.cli`: the same as the `angela-queue` command."""

from __future__ import annotations

from angela_queue.cli import main

main()
