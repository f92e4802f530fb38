"""examples/ with real processes: the README's steps, the example producers (Python and
SQL) and a worker running the example handler module, on a fresh database."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.e2e.helpers import ROOT, start_worker, stop, wait_for

pytestmark = pytest.mark.slow

EXAMPLES = ROOT / "examples"


def run(args: list[str], dsn: str, cwd=ROOT) -> str:
    env = {**os.environ, "ANGELA_QUEUE_DSN": dsn}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_example_worker_runs_what_the_example_producers_enqueue(dsn, conn):
    run([sys.executable, "-m", "angela_queue.cli", "queue", "set", "learning"], dsn)
    task_id = int(run([sys.executable, "produce.py"], dsn, cwd=EXAMPLES).strip())
    rows = conn.execute((EXAMPLES / "produce.sql").read_text()).fetchall()
    assert [r[1] for r in rows] == [
        "conversation.analyze",
        "pattern.learn",
        "insight.extract",
        "memory.consolidate",
    ]
    # david's "Urgent: …?" at 7 gets +3 (urgent) and +1 (question): critical.
    assert rows[0][2:] == (11, "critical")
    worker = start_worker(
        dsn, "--queue", "learning", app="learning:app", env={"PYTHONPATH": str(EXAMPLES)}
    )
    try:
        wait_for(
            lambda: conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'succeeded') = 8 AND count(*) = 8"
                " FROM angela_queue.tasks WHERE queue = 'learning'"
            ).fetchone()[0],
            timeout=30,
        )
    finally:
        code, output = stop(worker)
    assert code == 0, output
    analysis = conn.execute(
        "SELECT result FROM angela_queue.tasks WHERE id = %s", (task_id,)
    ).fetchone()[0]
    assert analysis == {"conversation": "c101", "mood": "calm", "question": True}
    # Both consolidations have the batch key 'david' and are low tier: one batch of two.
    batches = conn.execute(
        "SELECT result FROM angela_queue.tasks WHERE kind = 'memory.consolidate' ORDER BY id"
    ).fetchall()
    assert [r[0]["batch_size"] for r in batches] == [2, 2]
    assert batches[0][0]["batch"] == batches[1][0]["batch"]
