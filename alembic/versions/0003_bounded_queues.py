"""Bounded queues: the bound is enforced by the insert trigger, for every producer.

A bounded queue never holds more than max_size live tasks (pending + running: running
tasks keep their place, so retries and reclaims can never push the backlog over the
bound). When full, a task whose effective base is below drop_below_priority is stored as
'dropped' (overflow_policy 'drop_low'); any other is refused with SQLSTATE AQ002 — or, for
the Python client's bulk path (angela_queue.overflow = 'skip'), skipped and reported.
An unbounded queue takes none of these steps.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


UPGRADE = r"""
-- Scheduled tasks per queue, for counting a bounded queue's backlog. Only scheduled rows
-- enter it, so the common insert path (a task due now) never touches it.
CREATE INDEX tasks_scheduled_queue_idx ON angela_queue.tasks (queue)
    WHERE status = 'pending' AND NOT ready;
CREATE INDEX tasks_dropped_idx ON angela_queue.tasks (queue, sort_key)
    WHERE status = 'dropped';

-- Live tasks (pending + running) of one queue. Callers hold the queue's bound lock.
-- PL/pgSQL so that its plans are cached per session. Plain index scans only: a plan made
-- while the table was small must never become a scan of every finished row later, and
-- unlike a bitmap scan, an index scan marks the entries of finished tasks dead as it passes,
-- so churn does not pile up in its path.
CREATE FUNCTION angela_queue.queue_live_count(queue_name text) RETURNS bigint
LANGUAGE plpgsql STABLE SET enable_seqscan = off SET enable_bitmapscan = off AS $$
BEGIN
    RETURN (SELECT count(*) FROM angela_queue.tasks
             WHERE queue = queue_name AND status = 'pending' AND ready)
         + (SELECT count(*) FROM angela_queue.tasks
             WHERE queue = queue_name AND status = 'pending' AND NOT ready)
         + (SELECT count(*) FROM angela_queue.tasks
             WHERE queue = queue_name AND status = 'running');
END $$;

-- Serialises inserts into one bounded queue until the inserting transaction ends
-- (advisory-lock class 0x41510001, "AQ" 0001; the second key is hashtext(queue)).
CREATE FUNCTION angela_queue.queue_lock_bound(queue_name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1095827713, hashtext(queue_name));
END $$;

-- The insert trigger with the bound (the steps before it are those of 0002).
CREATE OR REPLACE FUNCTION angela_queue.task_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    q angela_queue.queues%ROWTYPE;
    base integer;
    wait interval;
    vars jsonb := angela_queue.rule_vars_object();
    live bigint;
    max_bytes integer := coalesce(
        nullif(current_setting('angela_queue.max_payload_bytes', true), '')::integer, 1048576);
BEGIN
    NEW.queue := coalesce(NEW.queue, 'default');
    NEW.payload := coalesce(NEW.payload, '{}');
    NEW.priority := coalesce(NEW.priority, 5);
    NEW.enqueued_at := coalesce(NEW.enqueued_at, now());
    NEW.run_at := coalesce(NEW.run_at, now());
    NEW.max_attempts := coalesce(NEW.max_attempts, 5);
    NEW.timeout_s := coalesce(NEW.timeout_s, 60);
    NEW.attempts := 0;
    -- The queue owns a task's state: a producer cannot start one as running or finished.
    IF NEW.status IS DISTINCT FROM 'pending' THEN
        RAISE EXCEPTION 'a new task is pending; its status is set by the queue, not "%"',
            NEW.status USING ERRCODE = 'AQ006';
    END IF;
    NEW.worker_id := NULL;
    NEW.started_at := NULL;
    NEW.first_started_at := NULL;
    NEW.finished_at := NULL;
    NEW.result := NULL;
    NEW.last_error := NULL;
    SELECT * INTO q FROM angela_queue.queues WHERE name = NEW.queue;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown queue "%"', NEW.queue
            USING ERRCODE = 'AQ001',
                  HINT = 'create it with: angela-queue queue set ' || NEW.queue;
    END IF;
    IF pg_column_size(NEW.payload) > max_bytes THEN
        RAISE EXCEPTION 'payload of % bytes exceeds the limit of % bytes',
            pg_column_size(NEW.payload), max_bytes USING ERRCODE = 'AQ003';
    END IF;
    -- silent => true: payload-dependent errors count as no match and never block an insert.
    SELECT coalesce(sum(r.boost), 0) INTO NEW.boost
      FROM angela_queue.boost_rules r
     WHERE r.enabled
       AND coalesce(jsonb_path_match(NEW.payload, r.predicate, vars, true), false);
    base := greatest(1, least(10, NEW.priority + NEW.boost));
    NEW.tier := angela_queue.tier_of(base);
    NEW.batch_key := coalesce(NEW.batch_key, NEW.kind);
    NEW.ready := NEW.run_at <= now();
    NEW.aging_from := CASE WHEN NEW.run_at > now() THEN NEW.run_at ELSE NEW.enqueued_at END;
    NEW.sort_key := q.aging_rate * angela_queue.epoch_minutes(NEW.aging_from) - base;
    wait := (q.target_waits ->> NEW.tier)::interval;
    IF wait IS NULL THEN
        SELECT t.target_wait INTO wait FROM angela_queue.tiers t WHERE t.tier = NEW.tier;
    END IF;
    NEW.deadline_at := NEW.aging_from + coalesce(wait, angela_queue.tier_target_wait(NEW.tier));
    IF q.max_size IS NULL OR NEW.status <> 'pending' THEN
        RETURN NEW;  -- unbounded: nothing more to do
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'inserts into bounded queue "%" need READ COMMITTED isolation', q.name
            USING ERRCODE = 'AQ005',
                  HINT = 'an older snapshot could not see the other producers of this queue';
    END IF;
    PERFORM angela_queue.queue_lock_bound(q.name);
    live := angela_queue.queue_live_count(q.name);  -- a fresh snapshot, taken after the lock
    IF live < q.max_size THEN
        RETURN NEW;
    END IF;
    IF q.overflow_policy = 'drop_low' AND base < q.drop_below_priority THEN
        NEW.status := 'dropped';
        NEW.finished_at := now();
        NEW.last_error := format('dropped: queue %s was full (%s/%s)', q.name, live, q.max_size);
        RETURN NEW;
    END IF;
    IF current_setting('angela_queue.overflow', true) = 'skip' THEN
        RETURN NULL;  -- the Python client's bulk path reports the task as rejected
    END IF;
    RAISE EXCEPTION 'queue "%" is full (max_size %)', q.name, q.max_size
        USING ERRCODE = 'AQ002',
              DETAIL = format('%s live tasks; below priority %s tasks are dropped, others refused',
                              live, q.drop_below_priority),
              HINT = 'retry later, or raise the bound: angela-queue queue set '
                     || q.name || ' --max-size N';
END $$;

-- Dropped, failed or cancelled tasks back to pending (requeue, retry), best first, as far
-- as each queue's bound allows. A failed task gets one more attempt if it had used them all.
CREATE FUNCTION angela_queue.task_requeue(
    from_status text, only_queue text DEFAULT NULL, only_ids bigint[] DEFAULT NULL)
RETURNS TABLE (queue_name text, requeued bigint, left_behind bigint)
LANGUAGE plpgsql AS $$
DECLARE
    q angela_queue.queues%ROWTYPE;
    room bigint;
    moved bigint;
BEGIN
    IF from_status NOT IN ('dropped', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'cannot requeue % tasks', from_status USING ERRCODE = '22023';
    END IF;
    FOR q IN SELECT * FROM angela_queue.queues qq
              WHERE (only_queue IS NULL OR qq.name = only_queue)
                AND EXISTS (SELECT 1 FROM angela_queue.tasks t
                             WHERE t.queue = qq.name AND t.status = from_status
                               AND (only_ids IS NULL OR t.id = ANY(only_ids)))
              ORDER BY qq.name LOOP
        IF q.max_size IS NULL THEN
            room := NULL;  -- LIMIT NULL: no limit
        ELSE
            PERFORM angela_queue.queue_lock_bound(q.name);
            room := greatest(0, q.max_size - angela_queue.queue_live_count(q.name));
        END IF;
        WITH picked AS (
            SELECT t.id FROM angela_queue.tasks t
             WHERE t.queue = q.name AND t.status = from_status
               AND (only_ids IS NULL OR t.id = ANY(only_ids))
             ORDER BY t.sort_key, t.id
             LIMIT room
               FOR UPDATE SKIP LOCKED
        )
        UPDATE angela_queue.tasks t
           SET status = 'pending', finished_at = NULL, run_at = greatest(t.run_at, now()),
               ready = true, max_attempts = greatest(t.max_attempts, t.attempts + 1)
          FROM picked WHERE t.id = picked.id;
        GET DIAGNOSTICS moved = ROW_COUNT;
        IF moved > 0 THEN
            PERFORM pg_notify('angela_queue', q.name);
        END IF;
        queue_name := q.name;
        requeued := moved;
        left_behind := (SELECT count(*) FROM angela_queue.tasks t
                         WHERE t.queue = q.name AND t.status = from_status
                           AND (only_ids IS NULL OR t.id = ANY(only_ids)));
        RETURN NEXT;
    END LOOP;
END $$;
"""

DOWNGRADE = r"""
DROP FUNCTION IF EXISTS angela_queue.task_requeue(text, text, bigint[]);
-- Back to the 0002 insert trigger (no bound).
CREATE OR REPLACE FUNCTION angela_queue.task_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    q angela_queue.queues%ROWTYPE;
    base integer;
    wait interval;
    vars jsonb := angela_queue.rule_vars_object();
    max_bytes integer := coalesce(
        nullif(current_setting('angela_queue.max_payload_bytes', true), '')::integer, 1048576);
BEGIN
    NEW.queue := coalesce(NEW.queue, 'default');
    NEW.payload := coalesce(NEW.payload, '{}');
    NEW.priority := coalesce(NEW.priority, 5);
    NEW.enqueued_at := coalesce(NEW.enqueued_at, now());
    NEW.run_at := coalesce(NEW.run_at, now());
    NEW.max_attempts := coalesce(NEW.max_attempts, 5);
    NEW.timeout_s := coalesce(NEW.timeout_s, 60);
    NEW.attempts := 0;
    SELECT * INTO q FROM angela_queue.queues WHERE name = NEW.queue;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown queue "%"', NEW.queue
            USING ERRCODE = 'AQ001',
                  HINT = 'create it with: angela-queue queue set ' || NEW.queue;
    END IF;
    IF pg_column_size(NEW.payload) > max_bytes THEN
        RAISE EXCEPTION 'payload of % bytes exceeds the limit of % bytes',
            pg_column_size(NEW.payload), max_bytes USING ERRCODE = 'AQ003';
    END IF;
    -- silent => true: payload-dependent errors count as no match and never block an insert.
    SELECT coalesce(sum(r.boost), 0) INTO NEW.boost
      FROM angela_queue.boost_rules r
     WHERE r.enabled
       AND coalesce(jsonb_path_match(NEW.payload, r.predicate, vars, true), false);
    base := greatest(1, least(10, NEW.priority + NEW.boost));
    NEW.tier := angela_queue.tier_of(base);
    NEW.batch_key := coalesce(NEW.batch_key, NEW.kind);
    NEW.ready := NEW.run_at <= now();
    NEW.aging_from := CASE WHEN NEW.run_at > now() THEN NEW.run_at ELSE NEW.enqueued_at END;
    NEW.sort_key := q.aging_rate * angela_queue.epoch_minutes(NEW.aging_from) - base;
    wait := (q.target_waits ->> NEW.tier)::interval;
    IF wait IS NULL THEN
        SELECT t.target_wait INTO wait FROM angela_queue.tiers t WHERE t.tier = NEW.tier;
    END IF;
    NEW.deadline_at := NEW.aging_from + coalesce(wait, angela_queue.tier_target_wait(NEW.tier));
    RETURN NEW;
END $$;
DROP FUNCTION IF EXISTS angela_queue.queue_lock_bound(text);
DROP FUNCTION IF EXISTS angela_queue.queue_live_count(text);
DROP INDEX IF EXISTS angela_queue.tasks_dropped_idx;
DROP INDEX IF EXISTS angela_queue.tasks_scheduled_queue_idx;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
