"""angela-queue's worker app for the side-by-side run of scripts/bench.py.

``angela-queue worker --app scripts.bench_worker_aq:app`` runs it; the database comes from
ANGELA_QUEUE_DSN. Both handlers are async no-ops apart from scripts/bench_probe.py's
record, exactly like the peers' handlers (scripts/bench_worker_pgq.py,
scripts/bench_worker_procrastinate.py, scripts/bench_worker_sql.py).
"""

from __future__ import annotations

from angela_queue import App, Task
from scripts import bench_probe

app = App()


@app.task("bench.noop")
async def noop(task: Task) -> None:
    bench_probe.noop()


@app.task("bench.latency")
async def latency(task: Task) -> None:
    bench_probe.latency(int(task.payload["n"]), float(task.payload["sent"]))
