"""Push at the insert: a one-statement producer claims for an idle worker as it inserts.

Migration 0017 fills an idle worker's offer at the producer's commit: the task is inserted
pending, the statement trigger clears the queue's flag, and a deferred trigger claims the
best due task for the offer (a second row version) and notifies the worker. For a
producer whose transaction is one INSERT, the commit follows at once, and that machinery
costs it about 0.65 ms of its enqueue call on this project's machine (docs/discussions.md,
"Session 8"). Here such a producer asks for the claim at the insert instead, with
``set_config('angela_queue.push_at_insert', 'on', true)`` in the same statement: the
task is written once, already ``running`` for the worker whose offer it takes, and the
notification is the same "<offer id> <task id> <row>". Nothing is claimed on the commit's
side, and no flag is cleared or notified: a running task wakes nobody.

The trigger takes an offer only when the commit-time fill would have pushed this very task:

- the offer is of the task's queue and kind, the task is due, not deduplicated (a
  conflict would skip the row after the push was sent) and its queue is not paused;
- the worker is live (its listener's lock, not dead, not asked to stop) as in offers_fill;
- nothing else is due for the worker (a reclaim, a retry): then the task goes in pending,
  and the commit's fill pushes the best of them, as before;
- READ COMMITTED only, as in offers_fill.

The offer's row stays locked until the statement's commit, which is at once: a producer
that holds the setting across a longer transaction would make a withdrawing worker wait,
so the Python client asks for it only on an autocommit connection (producer.py). Any
other insert takes the commit-time path, unchanged.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE FUNCTION angela_queue.task_push_at_insert() RETURNS trigger
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
             WHERE qq.name = ANY(o.queues) AND NOT qq.paused
               AND EXISTS (SELECT FROM angela_queue.tasks t
                            WHERE t.status = 'pending' AND t.ready AND t.queue = qq.name
                              AND t.kind = k.kind
                              AND t.sort_key >= coalesce(fl.floor, '-infinity'))) THEN
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

-- After tasks_before_insert (triggers fire in name order), which priced the row.
CREATE TRIGGER tasks_push_at_insert
    BEFORE INSERT ON angela_queue.tasks
    FOR EACH ROW
    WHEN (NEW.status = 'pending' AND NEW.ready AND NEW.dedupe_key IS NULL
          AND current_setting('angela_queue.push_at_insert', true) = 'on')
    EXECUTE FUNCTION angela_queue.task_push_at_insert();
"""

DOWNGRADE = r"""
DROP TRIGGER IF EXISTS tasks_push_at_insert ON angela_queue.tasks;
DROP FUNCTION IF EXISTS angela_queue.task_push_at_insert();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
