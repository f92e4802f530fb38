"""Retention: the cleaner deletes old finished rows in batches, one cleaner at a time."""

from __future__ import annotations

import psycopg
import pytest

from angela_queue.cleaner import Cleaner, CleanerConfig, parse_duration
from angela_queue.errors import ConfigurationError
from angela_queue.store import TaskStore


def seed(conn, status: str, age: str, n: int = 1) -> None:
    ids = [
        r[0]
        for r in conn.execute(
            "INSERT INTO angela_queue.tasks (kind) SELECT 'a.b' FROM generate_series(1, %s)"
            " RETURNING id",
            (n,),
        ).fetchall()
    ]
    if status != "pending":
        conn.execute(
            "UPDATE angela_queue.tasks SET status = %s,"
            " finished_at = now() - %s::interval WHERE id = ANY(%s)",
            (status, age, ids),
        )


def statuses(conn) -> dict[str, int]:
    return dict(
        conn.execute("SELECT status, count(*) FROM angela_queue.tasks GROUP BY 1").fetchall()
    )


def test_cleaner_deletes_only_finished_rows_past_the_retention(conn):
    seed(conn, "succeeded", "8 days", 2500)
    seed(conn, "failed", "8 days")
    seed(conn, "dropped", "8 days")
    seed(conn, "succeeded", "1 day", 3)
    seed(conn, "pending", "", 4)
    conn.execute(
        "UPDATE angela_queue.tasks SET enqueued_at = now() - interval '30 days'"
        " WHERE status = 'pending'"
    )
    result = Cleaner(CleanerConfig(retention_s=7 * 86400, batch_size=1000)).run_once(
        TaskStore(conn)
    )
    assert (result.tasks, result.skipped) == (2502, False)
    assert statuses(conn) == {"succeeded": 3, "pending": 4}


def test_dead_worker_rows_go_once_nothing_runs_under_them(conn):
    conn.execute(
        "INSERT INTO angela_queue.workers (hostname, pid, queues, status, heartbeat_at)"
        " VALUES ('h', 1, '{default}', 'dead', now() - interval '9 days'),"
        " ('h', 2, '{default}', 'dead', now() - interval '1 day'),"
        " ('h', 3, '{default}', 'idle', now() - interval '9 days')"
    )
    result = Cleaner(CleanerConfig(retention_s=7 * 86400)).run_once(TaskStore(conn))
    assert result.workers == 1
    assert [r[0] for r in conn.execute("SELECT pid FROM angela_queue.workers ORDER BY pid")] == [
        2,
        3,
    ]


def test_one_cleaner_at_a_time(dsn, conn):
    seed(conn, "succeeded", "8 days")
    with psycopg.connect(dsn) as other:
        other.execute("SELECT pg_advisory_xact_lock(1095827715, 0)")  # another cleaner's turn
        result = Cleaner(CleanerConfig(retention_s=86400)).run_once(TaskStore(conn))
        assert result.skipped
    assert statuses(conn) == {"succeeded": 1}


def test_zero_retention_keeps_everything(conn):
    seed(conn, "succeeded", "800 days")
    cleaner = Cleaner(CleanerConfig(retention_s=0))
    assert not cleaner.due()
    assert cleaner.run_once(TaskStore(conn)) == Cleaner(CleanerConfig(0)).run_once(TaskStore(conn))
    assert statuses(conn) == {"succeeded": 1}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("12h", 43200),
        ("7d", 604800),
        ("2w", 1209600),
        ("1.5h", 5400),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "7 days", "-3d", "3y"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ConfigurationError, match="duration"):
        parse_duration(text)
