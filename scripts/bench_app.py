"""Handlers for the worker processes of scripts/bench.py.

They do nothing, so that a drain measures the queue's own cost (claim, run, complete) and
not the work. The worker gets its database from ``ANGELA_QUEUE_DSN``. The kinds are
repeated in bench.py (HANDLER_KINDS), which must not import this module: building the App
reads the environment and the config file, which the benchmark does not want to depend on.
"""

from __future__ import annotations

from angela_queue import App, Task

app = App()


@app.task("bench.noop")
async def noop(task: Task) -> None:
    """Runs on the worker's event loop: the cheapest path a task can take."""


@app.task("bench.noop_sync")
def noop_sync(task: Task) -> None:
    """Runs in the worker's thread pool, like a typical blocking handler."""
