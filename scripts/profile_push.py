"""What pushing a task to an idle worker would save (`python scripts/profile_push.py`).

A design experiment for the idle-latency target, not the product: the product's worker
claims on NOTIFY. Two minimal workers are compared on one throwaway database, with the
same producer (``App.enqueue``, one task every 20 ms) and the same timestamps:

- ``claim``: today's path. The worker arms the queue, sleeps on LISTEN, and when notified
  claims with the product's own ``task_record_and_claim`` (one pipeline, async commit).
- ``push``: the worker leaves an offer row; a BEFORE INSERT trigger, after the pricing
  trigger, hands the new task to it (status ``running``, fenced like a claim) and NOTIFYs
  the worker's own channel with the row, so the worker starts it without a round trip.

The prototype's push has none of what a shipped one needs (docs/discussions.md, "Push"):
offers of dead workers, in-flight pushes on withdrawal, lost notifications, priority
order within one statement. It prints p50/p90/p99 of enqueue call → handler start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from angela_queue import App, Settings
from angela_queue.sql import QUERIES as Q
from angela_queue.store import AsyncTaskStore
from scripts.bench import ServerOptions, fresh_database, server

KIND = "proto.latency"
PUSH_DDL = r"""
CREATE UNLOGGED TABLE angela_queue.offers (
    worker_id bigint PRIMARY KEY, queue text NOT NULL, kinds text[] NOT NULL);
CREATE FUNCTION angela_queue.task_push() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE w bigint;
BEGIN
    IF NEW.status <> 'pending' OR NOT NEW.ready THEN
        RETURN NEW;
    END IF;
    SELECT o.worker_id INTO w FROM angela_queue.offers o
     WHERE o.queue = NEW.queue AND NEW.kind = ANY(o.kinds) LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF w IS NULL THEN
        RETURN NEW;
    END IF;
    DELETE FROM angela_queue.offers WHERE worker_id = w;
    NEW.status := 'running';
    NEW.worker_id := w;
    NEW.attempts := 1;
    NEW.started_at := now();
    NEW.first_started_at := now();
    PERFORM pg_notify('angela_queue_w' || w, json_build_object(
        'id', NEW.id, 'kind', NEW.kind, 'payload', NEW.payload, 'attempts', 1)::text);
    RETURN NEW;
END $$;
CREATE TRIGGER tasks_push BEFORE INSERT ON angela_queue.tasks FOR EACH ROW
    EXECUTE FUNCTION angela_queue.task_push();
"""


async def run_worker(dsn: str, mode: str, out_path: Path) -> None:
    """One minimal worker: writes "<started> <sent>" per task to ``out_path``."""
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    await conn.execute(Q["session_generic_plans"])
    listener = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    store = AsyncTaskStore(conn)
    worker_id = await store.worker_register("proto", os.getpid(), ["default"], [KIND], 10)
    channel = f"angela_queue_w{worker_id}" if mode == "push" else "angela_queue"
    await listener.execute(f"LISTEN {channel}")
    notes = listener.notifies()
    out = out_path.open("a", buffering=1)

    async def claim() -> bool:
        _, tasks = await store.task_record_and_claim(worker_id, [], ["default"], [KIND], 10)
        for task in tasks:
            out.write(f"{time.time():.6f} {task.payload['sent']}\n")
        return bool(tasks)

    while True:
        if mode == "push":
            await conn.execute(
                "INSERT INTO angela_queue.offers VALUES (%s, 'default', %s) ON CONFLICT DO NOTHING",
                (worker_id, [KIND]),
            )
        else:
            await store.queue_arm("default")
            if await claim():
                continue
        note = await anext(notes)
        if mode == "push":
            pushed = json.loads(note.payload)
            out.write(f"{time.time():.6f} {pushed['payload']['sent']}\n")
        else:
            await claim()


def install(dsn: str) -> None:
    """Add the prototype's offers table and push trigger to a throwaway database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(PUSH_DDL)


def measure(dsn: str, mode: str, tasks: int, rate: float) -> list[float]:
    """Milliseconds from each enqueue call to its handler's start, for one mode."""
    out = Path(tempfile.mkdtemp(prefix="aq-push-")) / "starts.txt"
    out.touch()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM angela_queue.offers")
        conn.execute(
            "UPDATE angela_queue.tasks SET status = 'succeeded', finished_at = now()"
            " WHERE status IN ('pending', 'running')"
        )
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.profile_push", "worker", mode, str(out)],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "ANGELA_QUEUE_DSN": dsn},
    )
    app = App(Settings(dsn=dsn))
    try:
        deadline = time.monotonic() + 30
        while not out.read_text():  # up and listening
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"error: the {mode} worker did not start")
            app.enqueue(KIND, {"sent": 0.0})
            time.sleep(0.2)
        time.sleep(1.0)
        began = time.perf_counter()
        for i in range(tasks):
            delay = began + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            app.enqueue(KIND, {"sent": time.time()})
        time.sleep(1.0)
    finally:
        app.close()
        proc.terminate()
        proc.wait(30)
    pairs = (line.split() for line in out.read_text().splitlines())
    return sorted((float(at) - float(sent)) * 1000 for at, sent in pairs if float(sent) > 0)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["worker"]:
        asyncio.run(run_worker(os.environ["ANGELA_QUEUE_DSN"], args[1], Path(args[2])))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dsn", help="server to use; its role needs CREATEDB (default: embedded)")
    p.add_argument("--tasks", type=int, default=300, help="tasks to time per run")
    p.add_argument("--rate", type=float, default=50.0, help="tasks sent per second")
    p.add_argument("--rounds", type=int, default=2, help="interleaved runs of each mode")
    a = p.parse_args(args)
    with (
        server(ServerOptions(a.dsn or os.environ.get("ANGELA_QUEUE_DSN"))) as srv,
        fresh_database(srv.dsn, "push") as dsn,
    ):
        install(dsn)
        for _ in range(a.rounds):
            for mode in ("claim", "push"):
                ms = measure(dsn, mode, a.tasks, a.rate)
                print(
                    f"{mode:5s} {len(ms)} tasks at {a.rate:g}/s, enqueue call → start:"
                    f" p50 {ms[len(ms) // 2]:.2f}  p90 {ms[int(len(ms) * 0.9)]:.2f}"
                    f"  p99 {ms[int(len(ms) * 0.99)]:.2f} ms"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
