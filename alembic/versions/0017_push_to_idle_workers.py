"""Push: an idle worker's offer is filled by the producer's commit, without a claim.

An idle worker woken by a NOTIFY pays a claim round trip before its task starts: about half
of its enqueue → start latency here (docs/discussions.md, "Session 5"). Instead, a worker
about to sleep may leave an offer, one slot, and the transaction that makes work for it
claims the task on its behalf as it commits and notifies the worker's own channel with the
claimed row:

- angela_queue.queue_offer arms the worker's queues as queue_arm does (migration 0012) and,
  under the same exclusive locks, records the offer only if no due task of its queues and
  kinds is pending; otherwise the worker claims, as it would have anyway.
- The push runs in a deferred trigger of queue_waiters, which fires when an insert clears a
  flag (the first insert after a worker armed): at commit, after every statement of the
  producer's transaction, it claims for each standing offer of the queue the best due task
  of that offer's queues and kinds, exactly as task_claim orders them (effective priority,
  SKIP LOCKED, claim floors, paused queues left alone). Several inserts in one transaction
  therefore push the best of them, not the first.
- Only to a live worker: the worker's listener session holds the advisory lock
  (0x41510004, worker id); a producer that can take it shared knows the session is gone
  and deletes the offer instead. Workers marked dead or asked to stop get nothing.
- Only under READ COMMITTED: a claim under an older snapshot could fail the producer's
  commit with a serialization error, and a push must never fail a producer.
- A row too large for NOTIFY's 8,000 bytes is announced by id, and the worker reads it.

The worker's side (angela_queue/push.py): it withdraws its offer in the pipeline of any
other claim, keeps a slot for a push whose offer was filled before its notification came,
adopts its running tasks it does not know after its listener reconnects, and releases what
was pushed but not started when it stops.

Offers live in an unlogged table, like the flags: a crash empties it, and a worker whose
offer is gone is woken by the flag's NOTIFY and claims.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE UNLOGGED TABLE angela_queue.worker_offers (
    worker_id  bigint PRIMARY KEY,
    offer_id   bigint NOT NULL,
    queues     text[] NOT NULL,
    kinds      text[] NOT NULL,
    offered_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE angela_queue.worker_offers IS
    'one free slot per idle worker, filled by the next producer''s commit (migration 0017)';

-- A worker about to sleep: arm its queues (as queue_arm) and, if nothing of its kinds is
-- due, leave an offer. The first queue's lock is waited for, the others only tried: a
-- producer holds the shared locks of several queues in the order of its statements, and a
-- worker waiting for a second lock while holding the first could deadlock with it.
-- Returns 'offered'; 'due' (claim instead); 'busy' (a lock was taken: arm one queue at a
-- time and claim, as without push) or 'stopping' (the worker is dead or asked to stop).
CREATE FUNCTION angela_queue.queue_offer(p_worker_id bigint, p_offer_id bigint,
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
         WHERE qq.name = ANY(p_queues) AND NOT qq.paused
           AND EXISTS (SELECT FROM angela_queue.tasks t
                        WHERE t.status = 'pending' AND t.ready AND t.queue = qq.name
                          AND t.kind = k.kind AND t.sort_key >= coalesce(f.floor, '-infinity')))
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

-- At the commit of a transaction that cleared a queue's flag: fill the queue's offers,
-- oldest first, each with the best due task of its queues and kinds (task_claim's order).
-- Its statements keep their generic plans, with JIT off, as the worker's claims do (see
-- session_generic_plans in queries.sql): planning this claim anew at each commit took
-- longer (0.9 ms) than running it.
CREATE FUNCTION angela_queue.offers_fill() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan SET jit = off
AS $$
DECLARE
    o record;
    t record;
    body text;
    stamp timestamptz;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RETURN NULL;
    END IF;
    FOR o IN SELECT f.worker_id, f.offer_id, f.queues, f.kinds
               FROM angela_queue.worker_offers f
              WHERE NEW.queue = ANY(f.queues)
              ORDER BY f.offered_at, f.worker_id
                FOR UPDATE SKIP LOCKED LOOP
        -- Taken shared, the lock proves the worker's listener gone: it holds it exclusively.
        IF pg_try_advisory_xact_lock_shared(1095827716, (o.worker_id % 2147483648)::integer)
           OR NOT EXISTS (SELECT FROM angela_queue.workers w
                           WHERE w.id = o.worker_id AND w.status <> 'dead'
                             AND NOT w.stop_requested) THEN
            DELETE FROM angela_queue.worker_offers WHERE worker_id = o.worker_id;
            CONTINUE;
        END IF;
        -- Started at the commit, not at the producer's now() (its transaction's start,
        -- which would make every pushed task's wait zero, however long it waited).
        stamp := clock_timestamp();
        WITH candidates AS (
            SELECT c.id, q.aging_rate * angela_queue.epoch_minutes(now()) - c.sort_key
                       AS effective_priority
              FROM angela_queue.queues q
             CROSS JOIN unnest(o.kinds) AS k(kind)
              LEFT JOIN angela_queue.claim_floors fl ON fl.queue = q.name AND fl.kind = k.kind
             CROSS JOIN LATERAL (
                    SELECT x.id, x.sort_key
                      FROM angela_queue.tasks x
                     WHERE x.status = 'pending' AND x.ready AND x.queue = q.name
                       AND x.kind = k.kind AND x.sort_key >= coalesce(fl.floor, '-infinity')
                     ORDER BY x.sort_key, x.id
                     LIMIT 1
                       FOR UPDATE SKIP LOCKED
                   ) c
             WHERE q.name = ANY(o.queues) AND NOT q.paused
             ORDER BY effective_priority DESC, c.id
             LIMIT 1
        )
        UPDATE angela_queue.tasks x
           SET status = 'running',
               attempts = x.attempts + 1,
               worker_id = o.worker_id,
               started_at = stamp,
               first_started_at = coalesce(x.first_started_at, stamp)
          FROM candidates c
         WHERE x.id = ANY(ARRAY(SELECT id FROM candidates)) AND x.id = c.id  -- see task_claim
        RETURNING x.id, x.queue, x.kind, x.payload, x.priority, x.boost, x.tier, x.attempts,
                  x.max_attempts, x.enqueued_at, x.run_at, x.deadline_at, x.started_at,
                  x.batch_key, x.dedupe_key, x.timeout_s, c.effective_priority
          INTO t;
        IF NOT FOUND THEN
            CONTINUE;  -- nothing of its kinds: the offer stands
        END IF;
        DELETE FROM angela_queue.worker_offers WHERE worker_id = o.worker_id;
        -- "<offer id> <task id> <row>", the row left out when NOTIFY could not carry it.
        body := o.offer_id || ' ' || t.id || ' ' || json_build_object(
            'queue', t.queue, 'kind', t.kind, 'payload', t.payload, 'priority', t.priority,
            'boost', t.boost, 'tier', t.tier, 'attempts', t.attempts,
            'max_attempts', t.max_attempts, 'enqueued_at', t.enqueued_at, 'run_at', t.run_at,
            'deadline_at', t.deadline_at, 'started_at', t.started_at,
            'batch_key', t.batch_key, 'dedupe_key', t.dedupe_key, 'timeout_s', t.timeout_s,
            'effective_priority', t.effective_priority)::text;
        IF octet_length(body) > 7900 THEN
            body := o.offer_id || ' ' || t.id;
        END IF;
        PERFORM pg_notify('angela_queue_w' || o.worker_id, body);
    END LOOP;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER queue_waiters_fill_offers
    AFTER UPDATE ON angela_queue.queue_waiters
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.waiting AND NOT NEW.waiting)
    EXECUTE FUNCTION angela_queue.offers_fill();

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'angela_queue_worker') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON angela_queue.worker_offers
           TO angela_queue_worker;
    END IF;
END $$;
"""

DOWNGRADE = r"""
DROP TRIGGER IF EXISTS queue_waiters_fill_offers ON angela_queue.queue_waiters;
DROP FUNCTION IF EXISTS angela_queue.offers_fill();
DROP FUNCTION IF EXISTS angela_queue.queue_offer(bigint, bigint, text[], text[]);
DROP TABLE IF EXISTS angela_queue.worker_offers;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
