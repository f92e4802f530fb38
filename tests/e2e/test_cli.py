"""The CLI as a user types it: results on stdout, every bad input one line on stderr."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from angela_queue import migrate
from tests.e2e.helpers import ROOT


def cli(*args: str, dsn: str | None = None, env: dict[str, str] | None = None):
    full_env = {
        k: v for k, v in os.environ.items() if k not in ("ANGELA_QUEUE_DSN", "DATABASE_URL")
    }
    if dsn is not None:
        full_env["ANGELA_QUEUE_DSN"] = dsn
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "angela_queue.cli", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_error(result, fragment: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0], lines[0]


def test_migrate_creates_the_schema_and_is_idempotent(empty_dsn):
    first = cli("migrate", dsn=empty_dsn)
    assert first.returncode == 0, first.stderr
    assert f"revision {migrate.head_revision()}" in first.stdout
    again = cli("migrate", dsn=empty_dsn)
    assert again.returncode == 0 and f"revision {migrate.head_revision()}" in again.stdout


def test_enqueue_then_status_json(dsn):
    result = cli(
        "enqueue", "conversation.analyze", "--payload", '{"text": "hi"}', "--priority", "8", dsn=dsn
    )
    assert result.returncode == 0, result.stderr
    task_id = int(result.stdout.strip())
    status = cli("status", "--json", dsn=dsn)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert {"queue": "default", "tier": "high", "pending": 1}.items() <= data["queues"][0].items()
    assert task_id > 0


def test_status_table(dsn):
    cli("enqueue", "conversation.analyze", dsn=dsn)
    result = cli("status", dsn=dsn)
    assert result.returncode == 0, result.stderr
    assert "default" in result.stdout and "medium" in result.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("enqueue", "a.b", "--payload", "{nope"), "--payload is not valid JSON"),
        (("enqueue", "a.b", "--payload", "[1]"), "--payload must be a JSON object"),
        (("enqueue", "a.b", "--priority", "11"), "--priority must be between 1 and 10"),
        (("enqueue", "a.b", "--queue", "nope"), "unknown queue 'nope'"),
        (("enqueue", "Bad Kind"), "invalid kind"),
        (("queue", "set", "q1", "--aging-rate", "-1"), "aging_rate must be between"),
        (("queue", "set", "Bad Name"), "invalid queue name"),
        (("worker", "--app", "nomodule_xyz:app"), "cannot import 'nomodule_xyz'"),
        (("worker", "--app", "json:dumps"), "is not an angela_queue.App"),
        (("worker", "--app", "nocolon"), "--app must look like MODULE:ATTR"),
    ],
)
def test_bad_input_is_one_line(dsn, args, fragment):
    assert_one_line_error(cli(*args, dsn=dsn), fragment)


def test_unmigrated_database_says_so(empty_dsn):
    assert_one_line_error(cli("status", dsn=empty_dsn), "angela-queue migrate")


def test_unreachable_database_is_one_line_and_hides_the_password():
    dsn = "postgresql://app:s3cret@127.0.0.1:1/jobs?connect_timeout=2"
    for args in (("status",), ("enqueue", "a.b"), ("migrate",)):
        result = cli(*args, dsn=dsn)
        assert_one_line_error(result, "cannot connect")
        assert "s3cret" not in result.stderr + result.stdout


def test_queue_set_and_list(dsn):
    result = cli("queue", "set", "learning", "--aging-rate", "0.5", "--pause", dsn=dsn)
    assert result.returncode == 0, result.stderr
    listed = cli("queue", "list", dsn=dsn)
    assert "learning: aging_rate=0.5 paused=True" in listed.stdout


def test_bad_setting_in_environment_is_one_line(dsn):
    result = cli("status", dsn=dsn, env={"ANGELA_QUEUE_CONCURRENCY": "lots"})
    assert_one_line_error(result, "concurrency")


def test_every_command_has_help():
    for args in (
        ("--help",),
        ("worker", "--help"),
        ("enqueue", "--help"),
        ("migrate", "--help"),
        ("status", "--help"),
        ("queue", "set", "--help"),
        ("db", "start", "--help"),
    ):
        result = cli(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert "Usage" in result.stdout


def test_status_watch_refreshes(dsn):
    proc = subprocess.Popen(
        [sys.executable, "-m", "angela_queue.cli", "status", "--watch", "0.3"],
        cwd=ROOT,
        env={**os.environ, "ANGELA_QUEUE_DSN": dsn},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a suite started in the background (`.ci/run &`) inherits an
        # ignored SIGINT, and Python then never turns Ctrl-C into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    try:
        # The first snapshot first (start-up is slow on a busy machine), then two refreshes.
        first = [proc.stdout.readline() for _ in range(3)]
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:  # never leave it running, whatever failed above
            proc.kill()
            proc.communicate()
    out = "".join(first) + rest
    assert out.count("workers") >= 2, out
    assert "Traceback" not in err
    assert proc.returncode is not None


def test_embedded_db_commands(tmp_path):
    env = {"ANGELA_QUEUE_PGDATA": str(tmp_path / "pgdata")}
    stopped = cli("db", "status", env=env)
    assert stopped.returncode == 1 and "stopped" in stopped.stdout
    assert_one_line_error(cli("db", "url", env=env), "not running")
    try:
        started = cli("db", "start", env=env)
        assert started.returncode == 0, started.stderr
        url = started.stdout.strip()
        assert url.startswith("postgresql://")
        # A handle left by a SIGKILLed process does not block the next start.
        handles = tmp_path / "pgdata" / ".handle_pids.json"
        handles.write_text("[999999999]")
        again = cli("db", "start", env=env)
        assert again.returncode == 0 and again.stdout.strip() == url
        assert cli("db", "url", env=env).stdout.strip() == url
        running = cli("db", "status", env=env)
        assert running.returncode == 0 and "running" in running.stdout
        migrated = cli("migrate", env=env)  # no DSN: the embedded server is used
        assert migrated.returncode == 0, migrated.stderr
    finally:
        assert "stopped" in cli("db", "stop", env=env).stdout
    assert cli("db", "status", env=env).returncode == 1
    assert "not running" in cli("db", "stop", env=env).stdout


def test_rules_add_applies_to_the_next_insert_only(dsn):
    before = int(cli("enqueue", "a.b", "--payload", '{"vip": true}', dsn=dsn).stdout)
    added = cli(
        "rules",
        "add",
        "vip",
        "$.vip == true",
        "--boost",
        "4",
        "--description",
        "paying customers",
        dsn=dsn,
    )
    assert added.returncode == 0, added.stderr
    after = int(cli("enqueue", "a.b", "--payload", '{"vip": true}', dsn=dsn).stdout)
    listed = json.loads(cli("rules", "list", "--json", dsn=dsn).stdout)
    assert {"name": "vip", "boost": 4, "enabled": True}.items() <= next(
        r for r in listed["rules"] if r["name"] == "vip"
    ).items()
    assert {r["name"] for r in listed["rules"]} >= {"emotional", "author_urgent", "author_question"}
    assert cli("rules", "disable", "vip", dsn=dsn).returncode == 0
    disabled = int(cli("enqueue", "a.b", "--payload", '{"vip": true}', dsn=dsn).stdout)
    assert cli("rules", "enable", "vip", dsn=dsn).returncode == 0
    assert cli("rules", "remove", "vip", dsn=dsn).returncode == 0
    import psycopg

    with psycopg.connect(dsn) as conn:
        boosts: dict[int, int] = dict(
            conn.execute("SELECT id, boost FROM angela_queue.tasks").fetchall()
        )
    assert (boosts[before], boosts[after], boosts[disabled]) == (0, 4, 0)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("rules", "add", "bad", "foo bar", "--boost", "1"), "invalid predicate: syntax error"),
        (
            ("rules", "add", "bad", "$nobody == 1", "--boost", "1"),
            'could not find jsonpath variable "nobody"',
        ),
        (("rules", "add", "bad", "$.x == 1", "--boost", "12"), "boost must be between -9 and 9"),
        (("rules", "add", "emotional", "$.x == 1", "--boost", "1"), "already exists"),
        (("rules", "enable", "nothing"), "no rule named 'nothing'"),
        (("rules", "remove", "nothing"), "no rule named 'nothing'"),
        (("rules", "remove-var", "author"), 'rule variable "author" is used by boost rule'),
        (("rules", "set-var", "author", "alice"), "the value is not valid JSON"),
        (("rules", "test", "[1]"), "the payload must be a JSON object"),
        (("tiers", "set", "urgent", "--target-wait", "3"), "urgent"),
        (("queue", "set", "q1", "--target-wait", "high:30"), "TIER=SECONDS"),
        (("queue", "set", "q1", "--target-wait", "high=soon"), "is not a number"),
    ],
)
def test_bad_rule_and_tier_input_is_one_line_and_stores_nothing(dsn, args, fragment):
    before = cli("rules", "list", "--json", dsn=dsn).stdout
    result = cli(*args, dsn=dsn)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert fragment in result.stderr, result.stderr
    assert cli("rules", "list", "--json", dsn=dsn).stdout == before


def test_rules_test_and_author_variable(dsn):
    payload = '{"author": "alice", "text": "urgent?"}'
    assert "total boost: +0" in cli("rules", "test", payload, dsn=dsn).stdout
    assert cli("rules", "set-var", "author", '"alice"', dsn=dsn).returncode == 0
    shown = cli("rules", "test", payload, dsn=dsn).stdout
    assert "author_urgent: +3" in shown and "total boost: +4" in shown


def test_tiers_and_queue_target_waits(dsn):
    assert cli("tiers", "set", "high", "--target-wait", "45", dsn=dsn).returncode == 0
    assert "high      base 7-8   target wait 45 s" in cli("tiers", "list", dsn=dsn).stdout
    result = cli("queue", "set", "learning", "--target-wait", "low=600", dsn=dsn)
    assert result.returncode == 0, result.stderr
    assert "target_waits: low=600 seconds" in result.stdout


def test_bounded_queue_cli_requeue_retry_cancel(dsn):
    result = cli("queue", "set", "small", "--max-size", "10", "--drop-below", "5", dsn=dsn)
    assert result.returncode == 0, result.stderr
    assert "max_size=10 drop_below=5 overflow_policy=drop_low" in result.stdout
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        # Twelve low tasks, one insert each (a subprocess each would cost ~10 s here): ten
        # fill the queue, the last two are kept as dropped.
        ids = []
        for _ in range(12):
            inserted = conn.execute(
                "INSERT INTO angela_queue.tasks (queue, kind, priority)"
                " VALUES ('small', 'a.b', 3) RETURNING id"
            ).fetchone()
            assert inserted is not None
            ids.append(inserted[0])
        assert conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'dropped') FROM angela_queue.tasks"
        ).fetchone() == (2,)
        full = cli("enqueue", "a.b", "--queue", "small", "--priority", "8", dsn=dsn)
        assert_one_line_error(full, 'queue "small" is full (max_size 10)')
        dropped = cli("enqueue", "a.b", "--queue", "small", "--priority", "3", dsn=dsn)
        assert dropped.returncode == 0, dropped.stderr
        conn.execute(
            "UPDATE angela_queue.tasks SET status = 'failed', finished_at = now() WHERE id = %s",
            (ids[0],),
        )
    requeued = cli("requeue", "--dropped", "--queue", "small", dsn=dsn)
    assert "small: 1 requeued, 2 still dropped" in requeued.stdout, requeued.stdout
    # The queue is full again, so the failed task stays failed: the bound holds for retries.
    assert "small: 0 retried, 1 still failed (no room)" in cli("retry", "--failed", dsn=dsn).stdout
    cancelled = cli("cancel", str(ids[1]), dsn=dsn)
    assert f"{ids[1]}: cancelled" in cancelled.stdout
    profile = cli("queue", "set", "other", "--profile", "high", dsn=dsn)
    assert "max_size=100" in profile.stdout
    unbounded = cli("queue", "set", "other", "--unbounded", dsn=dsn)
    assert "max_size=None" in unbounded.stdout
    assert_one_line_error(cli("requeue", dsn=dsn), "--dropped")
    assert_one_line_error(cli("retry", dsn=dsn), "--failed")
    assert_one_line_error(
        cli("queue", "set", "x", "--overflow-policy", "maybe", dsn=dsn),
        "overflow_policy must be drop_low or reject",
    )


def test_status_shows_workers_from_the_worker_stats_view(dsn, conn):
    conn.execute(
        "INSERT INTO angela_queue.workers (hostname, pid, queues, status, tasks_completed)"
        " VALUES ('box-1', 4242, '{default}', 'active', 17)"
    )
    result = cli("status", "--json", dsn=dsn)
    assert result.returncode == 0, result.stderr
    (worker,) = json.loads(result.stdout)["workers"]
    assert {
        "hostname": "box-1",
        "pid": 4242,
        "status": "active",
        "tasks_completed": 17,
    }.items() <= (worker.items())
    assert {"heartbeat_age_s", "last_active_at", "started_at", "tasks_running"} <= set(worker)
    table = cli("status", dsn=dsn, env={"COLUMNS": "160"})
    assert table.returncode == 0, table.stderr
    assert "workers" in table.stdout and "box-1" in table.stdout


def test_prune_older_than(dsn):
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO angela_queue.tasks (kind) SELECT 'a.b' FROM generate_series(1, 5)"
        )
        conn.execute(
            "UPDATE angela_queue.tasks SET status = 'succeeded',"
            " finished_at = now() - interval '3 days' WHERE id <= 3"
        )
    result = cli("prune", "--older-than", "2d", dsn=dsn)
    assert result.returncode == 0, result.stderr
    assert "pruned 3 finished task(s)" in result.stdout
    assert_one_line_error(cli("prune", "--older-than", "soon", dsn=dsn), "duration")
