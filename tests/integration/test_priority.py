"""The priority engine on real PostgreSQL: seeded rules, custom rules, aging, tiers, SLO."""

from __future__ import annotations

import json
from datetime import timedelta

import psycopg
import pytest
from psycopg.types.json import Jsonb

from angela_queue.store import TaskStore
from tests.integration.test_claim import add, claim


def boost_of(conn, payload: dict[str, object], priority: int = 5) -> tuple[int, str]:
    return conn.execute(
        "INSERT INTO angela_queue.tasks (kind, payload, priority) VALUES ('a.b', %s, %s)"
        " RETURNING boost, tier",
        (Jsonb(payload), priority),
    ).fetchone()


@pytest.mark.parametrize(
    ("payload", "boost"),
    [
        ({"emotional": True}, 2),
        ({"tags": ["daily", "emotional"]}, 2),
        ({"emotional": False, "tags": ["daily"]}, 0),
        ({"author": "david", "text": "This is URGENT, please"}, 3),
        ({"author": "david", "text": "urgent"}, 3),
        ({"author": "david", "text": "not urgently needed"}, 0),
        ({"author": "alice", "text": "urgent!"}, 0),
        ({"author": "david", "text": "can you help"}, 0),
        ({"author": "david", "text": "can you help?"}, 1),
        ({"author": "alice", "text": "can you help?"}, 0),
        ({"author": "david", "text": "Urgent: can you help?", "emotional": True}, 6),
        ({"text": 42, "author": ["david"]}, 0),
    ],
)
def test_seeded_rules_and_their_sum(conn, payload, boost):
    assert boost_of(conn, payload)[0] == boost


def test_boost_is_capped_into_the_tier_range(conn):
    everything = {"author": "david", "text": "urgent?", "emotional": True}
    assert boost_of(conn, everything, priority=8) == (6, "critical")
    conn.execute(
        "INSERT INTO angela_queue.boost_rules (name, predicate, boost)"
        " VALUES ('routine', '$.routine == true', -5)"
    )
    assert boost_of(conn, {"routine": True}, priority=3) == (-5, "low")


def test_author_is_a_variable(conn):
    with psycopg.ClientCursor(conn) as cur:
        cur.execute("UPDATE angela_queue.rule_vars SET value = '\"alice\"' WHERE name = 'author'")
    assert boost_of(conn, {"author": "alice", "text": "urgent"})[0] == 3
    assert boost_of(conn, {"author": "david", "text": "urgent"})[0] == 0


def test_variable_used_by_a_rule_cannot_be_removed(conn):
    with pytest.raises(psycopg.Error) as exc:
        conn.execute("DELETE FROM angela_queue.rule_vars WHERE name = 'author'")
    assert exc.value.sqlstate == "AQ004"


@pytest.mark.parametrize(
    "predicate",
    ["$.a / $.b > 1", "$.n + 1 > 2", "$.text", '$.a like_regex "x"', "$.deep.deeper[3] == 1"],
)
def test_a_predicate_that_errors_on_a_payload_never_blocks_an_insert(conn, predicate):
    conn.execute(
        "INSERT INTO angela_queue.boost_rules (name, predicate, boost)"
        " VALUES ('odd', %s::jsonpath, 4)",
        (predicate,),
    )
    assert boost_of(conn, {"a": 1, "b": 0, "n": "seven", "text": ["x"], "deep": 1})[0] == 0


def test_a_rule_the_database_cannot_evaluate_is_refused_before_storing(conn):
    with pytest.raises(psycopg.Error):
        conn.execute(
            "INSERT INTO angela_queue.boost_rules (name, predicate, boost)"
            " VALUES ('ghost', '$nobody == 1', 1)"
        )
    store = TaskStore(conn)
    assert "ghost" not in {r["name"] for r in store.rule_list()}


def test_a_changed_rule_applies_to_later_inserts_only(conn):
    before = boost_of(conn, {"vip": True})[0]
    TaskStore(conn).rule_insert("vip", "$.vip == true", 4, True, "")
    after = boost_of(conn, {"vip": True})[0]
    TaskStore(conn).rule_set_enabled("vip", False)
    disabled = boost_of(conn, {"vip": True})[0]
    assert (before, after, disabled) == (0, 4, 0)
    assert conn.execute("SELECT array_agg(boost ORDER BY id) FROM angela_queue.tasks").fetchone()[
        0
    ] == [0, 4, 0]


def test_starvation_is_impossible_an_old_low_task_beats_fresh_critical_work(dsn, conn):
    for _ in range(50):
        add(conn, 9)  # a constant stream of fresh priority-9 work
    half_hour = add(conn, 1, minutes_ago=30)  # 1 + 0.3 × 30 = 10 > 9
    five_min = add(conn, 1, minutes_ago=5)  # 1 + 0.3 × 5 = 2.5
    (first,) = claim(dsn, 1)
    assert first.id == half_hour
    rest = [t.id for t in claim(dsn, 51)]
    assert rest[-1] == five_min  # only after every fresh priority-9 task


def test_new_aging_rate_reranks_pending_tasks_at_once(dsn, conn):
    fresh_nine = add(conn, 9)
    old_one = add(conn, 1, minutes_ago=40)
    conn.execute("UPDATE angela_queue.queues SET aging_rate = 0 WHERE name = 'default'")
    got = claim(dsn, 2)
    assert [t.id for t in got] == [fresh_nine, old_one]
    assert abs(got[1].effective_priority - 1.0) < 1e-6


def test_per_queue_and_per_tier_target_waits(conn):
    store = TaskStore(conn)
    store.queue_upsert("learning")
    store.queue_set_target_wait("learning", "high", 30)
    store.tier_set_target_wait("medium", 120)
    rows = conn.execute(
        "INSERT INTO angela_queue.tasks (kind, queue, priority) VALUES"
        " ('a.b', 'learning', 8), ('a.b', 'learning', 5), ('a.b', 'default', 8)"
        " RETURNING deadline_at - enqueued_at"
    ).fetchall()
    assert [r[0] for r in rows] == [
        timedelta(seconds=30),
        timedelta(minutes=2),
        timedelta(minutes=1),
    ]
    store.queue_set_target_wait("learning", "high", None)
    assert store.queue_get("learning")["target_waits"] == {}  # type: ignore[index]


def test_unknown_tier_in_target_waits_is_refused(conn):
    with pytest.raises(psycopg.Error, match="unknown tier"):
        conn.execute('UPDATE angela_queue.queues SET target_waits = \'{"urgent": "1 s"}\'')


def test_tier_slo_reports_a_task_waiting_past_its_target(dsn, conn):
    late = add(conn, 8, minutes_ago=10)  # high: 1 minute target, waiting 10
    add(conn, 8)  # fresh: within target
    add(conn, 2, minutes_ago=10)  # low: 30 minutes target, fine
    slo = {(r["queue"], r["tier"]): r for r in TaskStore(conn).tier_slo_list()}
    high = slo[("default", "high")]
    assert (high["pending"], high["pending_past_target"]) == (2, 1)
    assert 590 < high["oldest_wait_s"] < 700
    assert high["target_wait_s"] == 60
    assert slo[("default", "low")]["pending_past_target"] == 0
    assert slo[("default", "critical")]["pending"] == 0  # every tier of every queue is listed
    started = claim(dsn, 2)  # the late one and the fresh one start now
    assert late in {t.id for t in started}
    high = {(r["queue"], r["tier"]): r for r in TaskStore(conn).tier_slo_list()}[
        ("default", "high")
    ]
    assert (high["started_1h"], high["met_1h"], high["met_ratio_1h"]) == (2, 1, 0.5)


def test_first_start_is_kept_across_retries(dsn, conn):
    add(conn, 5)
    (task,) = claim(dsn, 1)
    first = conn.execute("SELECT first_started_at FROM angela_queue.tasks").fetchone()[0]
    conn.execute("UPDATE angela_queue.tasks SET status = 'pending'")
    claim(dsn, 1)
    row = conn.execute("SELECT first_started_at, started_at FROM angela_queue.tasks").fetchone()
    assert row[0] == first and row[1] > first
    assert task.attempts == 1


def test_rule_match_shows_the_rules_a_payload_meets(conn):
    matched = TaskStore(conn).rule_match({"author": "david", "text": "urgent?"})
    assert [(m["name"], m["boost"]) for m in matched] == [
        ("author_question", 1),
        ("author_urgent", 3),
    ]
    assert json.dumps(matched)
