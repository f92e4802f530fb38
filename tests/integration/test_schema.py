"""The database is the API: a raw INSERT is a complete, valid task (DESIGN.md §1)."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from psycopg import errors as pg_errors


def insert(conn, columns: str, values: str, params=()):
    return conn.execute(
        f"INSERT INTO angela_queue.tasks ({columns}) VALUES ({values}) RETURNING *", params
    ).fetchone()


def test_raw_insert_with_only_kind_gets_every_default(conn):
    conn.row_factory = psycopg.rows.dict_row
    with conn.transaction():
        row = insert(conn, "kind", "'conversation.analyze'")
        now = conn.execute("SELECT now() AS now").fetchone()["now"]
    assert row["queue"] == "default"
    assert row["payload"] == {}
    assert row["priority"] == 5
    assert row["boost"] == 0
    assert row["tier"] == "medium"
    assert row["status"] == "pending"
    assert row["attempts"] == 0
    assert row["max_attempts"] == 5
    assert row["timeout_s"] == 60
    assert row["batch_key"] == "conversation.analyze"
    assert row["ready"] is True
    assert row["enqueued_at"] == now and row["run_at"] == now
    assert row["deadline_at"] == now + timedelta(minutes=5)
    assert row["worker_id"] is None and row["started_at"] is None and row["finished_at"] is None


@pytest.mark.parametrize(
    ("priority", "tier", "target"),
    [
        (10, "critical", timedelta(seconds=1)),
        (9, "critical", timedelta(seconds=1)),
        (8, "high", timedelta(minutes=1)),
        (7, "high", timedelta(minutes=1)),
        (6, "medium", timedelta(minutes=5)),
        (5, "medium", timedelta(minutes=5)),
        (4, "low", timedelta(minutes=30)),
        (1, "low", timedelta(minutes=30)),
    ],
)
def test_tier_and_deadline_follow_the_priority(conn, priority, tier, target):
    row = conn.execute(
        "INSERT INTO angela_queue.tasks (kind, priority) VALUES ('a.b', %s)"
        " RETURNING tier, deadline_at - enqueued_at",
        (priority,),
    ).fetchone()
    assert row == (tier, target)


@pytest.mark.parametrize("priority", [0, 11, -3])
def test_priority_out_of_range_is_rejected(conn, priority):
    with pytest.raises(pg_errors.CheckViolation) as exc:
        insert(conn, "kind, priority", "'a.b', %s", (priority,))
    assert exc.value.diag.constraint_name == "tasks_priority_check"


@pytest.mark.parametrize("kind", ["", "Bad.Kind", "1abc", "a..b", "a.b.", "has space", "a-b"])
def test_invalid_kind_is_rejected(conn, kind):
    with pytest.raises(pg_errors.CheckViolation) as exc:
        insert(conn, "kind", "%s", (kind,))
    assert exc.value.diag.constraint_name == "tasks_kind_check"


def test_missing_kind_is_rejected(conn):
    with pytest.raises(pg_errors.NotNullViolation):
        conn.execute("INSERT INTO angela_queue.tasks (priority) VALUES (3)")


@pytest.mark.parametrize("payload", ["[1, 2]", '"text"', "42", "null"])
def test_payload_must_be_an_object(conn, payload):
    with pytest.raises(pg_errors.CheckViolation) as exc:
        insert(conn, "kind, payload", "'a.b', %s::jsonb", (payload,))
    assert exc.value.diag.constraint_name == "tasks_payload_check"


def test_unknown_queue_fails_with_its_own_sqlstate(conn):
    with pytest.raises(psycopg.Error) as exc:
        insert(conn, "kind, queue", "'a.b', 'nope'")
    assert exc.value.sqlstate == "AQ001"
    assert "nope" in (exc.value.diag.message_primary or "")


def test_payload_over_the_limit_fails_with_its_own_sqlstate(conn):
    conn.execute("SET angela_queue.max_payload_bytes = '1000'")
    insert(conn, "kind, payload", "'a.b', %s::jsonb", ('{"x": "' + "y" * 500 + '"}',))
    with pytest.raises(psycopg.Error) as exc:
        insert(conn, "kind, payload", "'a.b', jsonb_build_object('x', repeat('y', 5000))")
    assert exc.value.sqlstate == "AQ003"


def test_default_payload_limit_is_one_mebibyte(conn):
    big = "y" * (1024 * 1024 + 10)
    with pytest.raises(psycopg.Error) as exc:
        insert(conn, "kind, payload", "'a.b', jsonb_build_object('x', %s::text)", (big,))
    assert exc.value.sqlstate == "AQ003"


def test_scheduled_task_stays_out_of_the_claim_path_and_ages_from_run_at(conn):
    ready, aging_from, run_at = conn.execute(
        "INSERT INTO angela_queue.tasks (kind, run_at) VALUES ('a.b', now() + interval '1 hour')"
        " RETURNING ready, aging_from, run_at"
    ).fetchone()
    assert ready is False
    assert aging_from == run_at


def test_backdated_enqueued_at_counts_for_aging(conn):
    aging_from, enqueued_at = conn.execute(
        "INSERT INTO angela_queue.tasks (kind, enqueued_at)"
        " VALUES ('a.b', now() - interval '40 minutes') RETURNING aging_from, enqueued_at"
    ).fetchone()
    assert aging_from == enqueued_at


def test_boost_rules_apply_at_insert_and_errors_count_as_no_match(conn):
    conn.execute(
        "INSERT INTO angela_queue.boost_rules (name, predicate, boost)"
        " VALUES ('urgent', '$.text like_regex \"urgent\" flag \"i\"', 3),"
        " ('weird', '$.n > 5', 1)"
    )
    boost, tier = conn.execute(
        "INSERT INTO angela_queue.tasks (kind, payload, priority)"
        ' VALUES (\'a.b\', \'{"text": "URGENT please", "n": "not a number"}\', 5)'
        " RETURNING boost, tier"
    ).fetchone()
    assert (boost, tier) == (3, "high")


def test_dedupe_key_is_unique_among_live_tasks_only(conn):
    conn.execute("INSERT INTO angela_queue.tasks (kind, dedupe_key) VALUES ('a.b', 'k1')")
    with pytest.raises(pg_errors.UniqueViolation):
        conn.execute("INSERT INTO angela_queue.tasks (kind, dedupe_key) VALUES ('a.b', 'k1')")
    conn.execute("UPDATE angela_queue.tasks SET status = 'succeeded' WHERE dedupe_key = 'k1'")
    conn.execute("INSERT INTO angela_queue.tasks (kind, dedupe_key) VALUES ('a.b', 'k1')")


def test_raw_insert_notifies_a_waiting_worker_with_the_queue(dsn, conn):
    conn.execute("SELECT angela_queue.queue_arm('default')")  # a worker waits (0012)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN angela_queue")
        conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('a.b')")
        notes = list(listener.notifies(timeout=2, stop_after=1))
    assert [n.payload for n in notes] == ["default"]


def test_scheduled_insert_does_not_notify(dsn, conn):
    conn.execute("SELECT angela_queue.queue_arm('default')")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN angela_queue")
        conn.execute(
            "INSERT INTO angela_queue.tasks (kind, run_at)"
            " VALUES ('a.b', now() + interval '1 hour')"
        )
        notes = list(listener.notifies(timeout=0.3))
    assert notes == []


def test_tasks_table_storage_is_tuned_for_a_queue(conn):
    """Migration 0009: room on each page for the claim's and finish's row versions, and
    autovacuum after 2 % of the rows changed rather than 20 %."""
    options = conn.execute(
        "SELECT reloptions FROM pg_class WHERE oid = 'angela_queue.tasks'::regclass"
    ).fetchone()[0]
    assert set(options) == {
        "fillfactor=80",
        "autovacuum_vacuum_scale_factor=0.02",
        "autovacuum_vacuum_threshold=1000",
        "autovacuum_vacuum_insert_scale_factor=0.02",
        "autovacuum_analyze_scale_factor=0.02",
        "autovacuum_vacuum_cost_delay=1",
    }


def test_claim_and_finish_maintain_no_first_start_index(conn):
    indexes = {
        r[0]
        for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'angela_queue'"
            " AND tablename = 'tasks'"
        )
    }
    assert "tasks_first_started_at_idx" not in indexes
    assert "tasks_retrying_idx" in indexes


def test_epoch_minutes_is_inlined_and_independent_of_the_time_zone(conn):
    """Migration 0011: an inlined body, and the same minutes whatever the session's zone."""
    plan = "\n".join(
        r[0]
        for r in conn.execute(
            "EXPLAIN (VERBOSE, COSTS OFF) SELECT angela_queue.epoch_minutes(now())"
        )
    )
    assert "epoch_minutes" not in plan and "EXTRACT" in plan.upper()
    samples = (
        "1970-01-01 00:00:00+00",
        "2026-03-29 01:59:59.999999+00",  # around a DST change in Europe
        "2026-11-30 22:49:24.123456+00",
        "2100-02-28 23:00:00.5+00",
    )
    for zone in ("UTC", "Europe/Paris", "America/St_Johns", "Pacific/Kiritimati"):
        conn.execute("SELECT set_config('TimeZone', %s, false)", (zone,))
        for ts in samples:
            got, expected = conn.execute(
                "SELECT angela_queue.epoch_minutes(%s::timestamptz),"
                " extract(epoch FROM %s::timestamptz)::double precision / 60",
                (ts, ts),
            ).fetchone()
            assert got == expected, (zone, ts)


def test_every_sql_language_function_is_inlined_by_the_planner(conn):
    """A LANGUAGE sql function the planner cannot inline is planned afresh wherever its
    calling expression is set up: in a trigger, once per transaction (migration 0020 moved
    rule_vars_object to PL/pgSQL for that). The rest must stay inlinable: each is explained
    with a parameter (a generic plan, so no constant folding hides a call)."""
    functions = conn.execute(
        "SELECT p.proname, p.oid::regprocedure::text, ARRAY(SELECT format_type(t, NULL)"
        "        FROM unnest(p.proargtypes) AS t)"
        "  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        "  JOIN pg_language l ON l.oid = p.prolang"
        " WHERE n.nspname = 'angela_queue' AND l.lanname = 'sql' ORDER BY 1"
    ).fetchall()
    assert {name for name, _, _ in functions} >= {"tier_of", "epoch_minutes"}
    conn.execute("SET plan_cache_mode = force_generic_plan")
    for name, signature, types in functions:
        params = ", ".join(f"${i}" for i in range(1, len(types) + 1))
        conn.execute(
            f"PREPARE call_{name} ({', '.join(types)}) AS SELECT angela_queue.{name}({params})"
        )
        nulls = ", ".join("NULL" for _ in types)
        plan = "\n".join(
            r[0] for r in conn.execute(f"EXPLAIN (VERBOSE, COSTS OFF) EXECUTE call_{name}({nulls})")
        )
        assert f"{name}(" not in plan, f"{signature} is not inlined:\n{plan}"
    (language,) = conn.execute(
        "SELECT l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang"
        " WHERE p.oid = 'angela_queue.rule_vars_object()'::regprocedure"
    ).fetchone()
    assert language == "plpgsql"
