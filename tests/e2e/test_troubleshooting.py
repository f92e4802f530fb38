"""The claims of the README's "Troubleshooting" section, with real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import psycopg
import pytest

from angela_queue import embedded
from tests.e2e.helpers import ROOT, start_worker, stop, wait_for, wait_for_live_workers

pytestmark = pytest.mark.slow

# Verbatim from README.md "Troubleshooting" (test_readme_shows_the_query checks it).
STRANDED = """SELECT t.queue, t.kind, count(*) AS pending, bool_or(q.paused) AS paused,
       min(t.run_at) AS first_due
  FROM angela_queue.tasks t JOIN angela_queue.queues q ON q.name = t.queue
 WHERE t.status = 'pending'
   AND (q.paused OR t.run_at > now() OR NOT EXISTS (
        SELECT 1 FROM angela_queue.worker_stats w
         WHERE w.status <> 'dead' AND t.queue = ANY(w.queues) AND t.kind = ANY(w.kinds)))
 GROUP BY 1, 2 ORDER BY 1, 2;"""


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("ANGELA_QUEUE_DSN", "DATABASE_URL")}
    return subprocess.run(
        [sys.executable, "-m", "angela_queue.cli", *args],
        cwd=ROOT,
        env={**full, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_readme_shows_the_query():
    assert STRANDED in (ROOT / "README.md").read_text()


def test_tasks_no_worker_can_take_stay_pending_and_the_query_says_why(dsn, conn):
    conn.execute("INSERT INTO angela_queue.queues (name, paused) VALUES ('held', true)")
    conn.execute("INSERT INTO angela_queue.queues (name) VALUES ('other')")
    conn.execute(
        "INSERT INTO angela_queue.tasks (queue, kind, run_at) VALUES"
        " ('default', 'test.noop', DEFAULT),"  # served: runs
        " ('default', 'nobody.handles', DEFAULT),"  # no handler for the kind
        " ('other', 'test.noop', DEFAULT),"  # a queue the worker does not serve
        " ('held', 'test.noop', DEFAULT),"  # a paused queue
        " ('default', 'test.noop', now() + interval '1 hour')"  # not due yet
    )
    worker = start_worker(dsn)  # serves the queue 'default' only
    try:
        wait_for(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM angela_queue.tasks WHERE status = 'succeeded'"
                ).fetchone()[0]
                == 1
            )
        )
        stranded = {(r[0], r[1]): r[3] for r in conn.execute(STRANDED).fetchall()}
    finally:
        code, output = stop(worker)
    assert code == 0, output
    assert stranded == {
        ("default", "nobody.handles"): False,
        ("default", "test.noop"): False,  # the one due in an hour
        ("held", "test.noop"): True,
        ("other", "test.noop"): False,
    }
    assert conn.execute(
        "SELECT count(*) FROM angela_queue.tasks WHERE status = 'pending'"
    ).fetchone() == (4,)


def test_the_embedded_server_never_listens_on_tcp(tmp_path):
    env = {"ANGELA_QUEUE_PGDATA": str(tmp_path / "pgdata")}
    try:
        started = cli("db", "start", env=env)
        assert started.returncode == 0, started.stderr
        with psycopg.connect(started.stdout.strip()) as conn:
            assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
            assert conn.info.host.startswith("/")  # a unix socket directory
    finally:
        cli("db", "stop", env=env)


def test_a_sigkilled_server_is_started_again_by_db_start_with_its_data(tmp_path):
    pgdata = tmp_path / "pgdata"
    env = {"ANGELA_QUEUE_PGDATA": str(pgdata)}
    try:
        url = cli("db", "start", env=env).stdout.strip()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (n int)")
        postmaster = psutil.Process(embedded.status(pgdata).pid or 0)
        children = postmaster.children()
        postmaster.send_signal(signal.SIGKILL)  # the OOM killer, a kill -9
        psutil.wait_procs([postmaster, *children], timeout=20)
        assert (pgdata / "postmaster.pid").exists()  # stale
        status = cli("db", "status", env=env)
        assert status.returncode == 1 and "stopped" in status.stdout
        again = cli("db", "start", env=env)
        assert again.returncode == 0, again.stderr
        with psycopg.connect(again.stdout.strip()) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
    finally:
        assert "stopped" in cli("db", "stop", env=env).stdout


def test_an_unusable_data_directory_is_one_line_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad = Path(blocker, "pgdata")
    result = cli("db", "start", env={"ANGELA_QUEUE_PGDATA": str(bad)})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"could not start the embedded PostgreSQL in {bad}" in lines[0]
    assert f"(see {bad}/log)" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["metrics", "dashboard"])
def test_a_busy_port_is_one_line(dsn, command):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli(command, "--port", str(port), env={"ANGELA_QUEUE_DSN": dsn})
    assert result.returncode == 1
    assert (
        result.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_the_demo_refuses_a_database_where_workers_of_this_host_serve_its_queue(dsn, conn):
    conn.execute("INSERT INTO angela_queue.queues (name) VALUES ('learning')")
    worker = start_worker(dsn, "--queue", "learning")
    try:
        wait_for_live_workers(conn)
        result = cli("demo", "--quick", env={"ANGELA_QUEUE_DSN": dsn})
    finally:
        code, output = stop(worker)
    assert code == 0, output
    assert result.returncode == 1
    assert (
        "1 angela-queue worker(s) of this host already serve the queue 'learning' in this"
        f" database (pids {worker.pid})" in (result.stderr)
    ), result.stderr
    assert "Traceback" not in result.stdout + result.stderr


# The demo running beside a worker of another queue and leaving it alone is checked by
# tests/e2e/test_demo.py's quick run (one demo run for both).
