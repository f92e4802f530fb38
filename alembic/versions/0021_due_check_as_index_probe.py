"""Is anything else due for the worker? An index probe per (queue, kind), not a hash of the queue.

Before it takes an idle worker's offer, the insert's push (migration 0018) checks that
nothing else is due for that worker; so does the worker as it offers (migration 0017). Both
asked it with ``EXISTS (SELECT FROM tasks WHERE … AND sort_key >= floor)`` correlated to
each (queue, kind) pair. Under the functions' generic plans PostgreSQL turned that into a
hash semi-join over every due entry of the queue's claim index, floor or no floor: every
pending task of the queue, of any kind, and every dead entry a claim left behind. An idle
worker next to a backlog of kinds it does not run paid for that backlog at each offer, and
so did every producer's insert that took its offer; at 1,200 dead entries the check alone
cost 0.3 ms of a push (EXPLAIN ANALYZE; docs/discussions.md, "Session 10").

Here the check is written as offers_fill already claims: a LATERAL probe of
tasks_claim_idx from the pair's floor, LIMIT 1. One index descent per pair, whatever else
the queue holds (tests/integration/test_push_at_insert.py counts the entries read). Same
answer, same locks; only the two checks change.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-01
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE OR REPLACE FUNCTION angela_queue.task_push_at_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan SET jit = off
AS $$
DECLARE
    o record;
    q record;
    stamp timestamptz;
    body text;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RETURN NEW;
    END IF;
    SELECT qq.aging_rate, qq.paused INTO q FROM angela_queue.queues qq WHERE qq.name = NEW.queue;
    IF NOT FOUND OR q.paused THEN
        RETURN NEW;
    END IF;
    FOR o IN SELECT f.worker_id, f.offer_id, f.queues, f.kinds
               FROM angela_queue.worker_offers f
              WHERE NEW.queue = ANY(f.queues) AND NEW.kind = ANY(f.kinds)
              ORDER BY f.offered_at, f.worker_id
                FOR UPDATE SKIP LOCKED LOOP
        -- Taken shared, the lock proves the worker's listener gone (offers_fill).
        IF pg_try_advisory_xact_lock_shared(1095827716, (o.worker_id % 2147483648)::integer)
           OR NOT EXISTS (SELECT FROM angela_queue.workers w
                           WHERE w.id = o.worker_id AND w.status <> 'dead'
                             AND NOT w.stop_requested) THEN
            DELETE FROM angela_queue.worker_offers WHERE worker_id = o.worker_id;
            CONTINUE;
        END IF;
        -- Something else is due for this worker: the commit's fill pushes the best.
        IF EXISTS (
            SELECT FROM angela_queue.queues qq
             CROSS JOIN unnest(o.kinds) AS k(kind)
              LEFT JOIN angela_queue.claim_floors fl ON fl.queue = qq.name AND fl.kind = k.kind
             CROSS JOIN LATERAL (
                    SELECT FROM angela_queue.tasks t
                     WHERE t.status = 'pending' AND t.ready AND t.queue = qq.name
                       AND t.kind = k.kind AND t.sort_key >= coalesce(fl.floor, '-infinity')
                     ORDER BY t.sort_key
                     LIMIT 1
                   ) due
             WHERE qq.name = ANY(o.queues) AND NOT qq.paused) THEN
            RETURN NEW;
        END IF;
        DELETE FROM angela_queue.worker_offers WHERE worker_id = o.worker_id;
        stamp := clock_timestamp();
        NEW.status := 'running';
        NEW.attempts := 1;
        NEW.worker_id := o.worker_id;
        NEW.started_at := stamp;
        NEW.first_started_at := stamp;
        -- The row as offers_fill sends it; NOTIFY waits for the commit, like the row.
        body := o.offer_id || ' ' || NEW.id || ' ' || json_build_object(
            'queue', NEW.queue, 'kind', NEW.kind, 'payload', NEW.payload,
            'priority', NEW.priority, 'boost', NEW.boost, 'tier', NEW.tier,
            'attempts', NEW.attempts, 'max_attempts', NEW.max_attempts,
            'enqueued_at', NEW.enqueued_at, 'run_at', NEW.run_at,
            'deadline_at', NEW.deadline_at, 'started_at', NEW.started_at,
            'batch_key', NEW.batch_key, 'dedupe_key', NEW.dedupe_key,
            'timeout_s', NEW.timeout_s,
            'effective_priority', q.aging_rate * angela_queue.epoch_minutes(now())
                                  - NEW.sort_key)::text;
        IF octet_length(body) > 7900 THEN
            body := o.offer_id || ' ' || NEW.id;
        END IF;
        PERFORM pg_notify('angela_queue_w' || o.worker_id, body);
        RETURN NEW;
    END LOOP;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION angela_queue.queue_offer(p_worker_id bigint, p_offer_id bigint,
                                         p_queues text[], p_kinds text[])
RETURNS text
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET jit = off AS $$
DECLARE
    q text;
    locked integer := 0;
BEGIN
    FOR q IN SELECT DISTINCT u FROM unnest(p_queues) AS u ORDER BY 1 LOOP
        IF locked = 0 THEN
            PERFORM pg_advisory_xact_lock(1095827715, hashtext(q));
        ELSIF NOT pg_try_advisory_xact_lock(1095827715, hashtext(q)) THEN
            RETURN 'busy';
        END IF;
        locked := locked + 1;
        IF NOT EXISTS (SELECT FROM angela_queue.queues WHERE name = q) THEN
            RAISE EXCEPTION 'unknown queue "%"', q USING ERRCODE = 'AQ001';  -- deleted
        END IF;
        INSERT INTO angela_queue.queue_waiters (queue, waiting) VALUES (q, true)
        ON CONFLICT (queue) DO UPDATE SET waiting = true WHERE NOT queue_waiters.waiting;
    END LOOP;
    IF NOT EXISTS (SELECT FROM angela_queue.workers w WHERE w.id = p_worker_id
                      AND w.status <> 'dead' AND NOT w.stop_requested) THEN
        RETURN 'stopping';  -- no producer would fill it
    END IF;
    -- Every producer of these queues has committed: what it inserted is visible here.
    IF EXISTS (
        SELECT FROM angela_queue.queues qq
         CROSS JOIN unnest(p_kinds) AS k(kind)
          LEFT JOIN angela_queue.claim_floors f ON f.queue = qq.name AND f.kind = k.kind
         CROSS JOIN LATERAL (
                SELECT FROM angela_queue.tasks t
                 WHERE t.status = 'pending' AND t.ready AND t.queue = qq.name
                   AND t.kind = k.kind AND t.sort_key >= coalesce(f.floor, '-infinity')
                 ORDER BY t.sort_key
                 LIMIT 1
               ) due
         WHERE qq.name = ANY(p_queues) AND NOT qq.paused)
       OR EXISTS (SELECT FROM angela_queue.tasks t
                   WHERE t.status = 'pending' AND NOT t.ready AND t.run_at <= now()
                     AND t.queue = ANY(p_queues)) THEN
        RETURN 'due';
    END IF;
    INSERT INTO angela_queue.worker_offers (worker_id, offer_id, queues, kinds)
    VALUES (p_worker_id, p_offer_id, p_queues, p_kinds)
    ON CONFLICT (worker_id) DO UPDATE
       SET offer_id = excluded.offer_id, queues = excluded.queues, kinds = excluded.kinds,
           offered_at = excluded.offered_at;
    RETURN 'offered';
END $$;
"""


def _migration(module_file: str) -> ModuleType:
    """An earlier migration's module (frozen files): what downgrade restores."""
    spec = importlib.util.spec_from_file_location(
        module_file, Path(__file__).with_name(module_file)
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    # 0016's helpers pick a function out of an earlier migration's text, as 0019 does.
    helpers = _migration("0016_cheaper_bulk_insert.py")
    for module_file, name in (
        ("0018_push_at_insert.py", "task_push_at_insert"),
        ("0017_push_to_idle_workers.py", "queue_offer"),
    ):
        op.execute(helpers._function(helpers._frozen_text(module_file, "UPGRADE"), name))
