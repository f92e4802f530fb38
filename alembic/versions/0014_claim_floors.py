"""Claim floors: a claim starts its index walk at the first live task, not at the first entry.

A claim reads tasks_claim_idx in sort_key order from its start. Every claimed task leaves a
dead entry at that start, and VACUUM (or the kill bits a scan sets) removes it only once no
snapshot can still see the row. One transaction held open in the queue's database keeps
them all: at 200 tasks/s, five minutes leave 60,000 dead entries before the first live one,
each costing a heap visit, and the claim's p99 went from 6.6 to 74 ms (scripts/chaos.py
longtx; Brandur, "Postgres Job Queues & Failure By MVCC").

So each (queue, kind) gets a floor, and a claim reads only sort_key >= floor: the B-tree
descends straight to it, past the dead entries. The invariant is "no due pending task of
(queue, kind) has a sort_key below its floor"; a pair without a row has no floor.

- Lowered in the transaction that makes a task claimable below it: an insert (statement
  trigger), or an update that makes a row due and pending or lowers its sort_key
  (promotion, retry, reclaim, release, rerank: row trigger). Both take the queue's shared
  advisory lock first (the lock of migration 0012, which inserts already took).
- Raised by angela_queue.claim_floor_raise, which a worker calls from its heartbeat thread
  after it has claimed work: under the queue's exclusive advisory lock, only tried, never
  waited for, it sets the floor to the first due pending task's sort_key (+infinity when
  there is none), scanning from the old floor. At most once a second per floor: each raise
  leaves a row version that a long transaction keeps as well. Holding the exclusive lock,
  no transaction that made a task claimable is uncommitted; one that does it later waits
  for the lock and then sees the raised floor, and lowers it.
- Under REPEATABLE READ or SERIALIZABLE a producer reads the floor of its snapshot, which
  may predate a raise. Its trigger then touches the floor row with INSERT … ON CONFLICT DO
  NOTHING, which fails with 40001 (serialization failure) when the row changed since the
  snapshot: the transaction is retried, as such transactions must be anyway.
- A safety net: every 60 s a raise scans from the start instead of the old floor. It costs
  one full walk a minute on the heartbeat's connection and repairs whatever bypassed the
  triggers (session_replication_role = replica, for one).

The table is unlogged: a crash empties it, and no row means no floor, which is always
correct. Both trigger functions are SECURITY DEFINER so that no producer or worker needs
the right to write a floor (one set too high would hide tasks).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE UNLOGGED TABLE angela_queue.claim_floors (
    queue     text NOT NULL REFERENCES angela_queue.queues (name) ON DELETE CASCADE,
    kind      text NOT NULL,
    floor     double precision NOT NULL,
    swept_at  timestamptz NOT NULL DEFAULT '-infinity',
    raised_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, kind)
);
COMMENT ON TABLE angela_queue.claim_floors IS
    'per queue and kind: no due pending task has a sort_key below floor (see migration 0014)';

-- Lower the floor of (queue_name, kind_name) to low if it is higher, under the queue's
-- shared advisory lock (taking it again in one transaction is free). Only the two trigger
-- functions below call it, with their search_path.
CREATE FUNCTION angela_queue.claim_floor_lower(queue_name text, kind_name text,
                                               low double precision) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1095827715, hashtext(queue_name));
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        -- 40001 if the row changed or appeared since this transaction's snapshot.
        INSERT INTO angela_queue.claim_floors (queue, kind, floor)
        VALUES (queue_name, kind_name, low)
        ON CONFLICT (queue, kind) DO NOTHING;
    END IF;
    UPDATE angela_queue.claim_floors SET floor = low
     WHERE queue = queue_name AND kind = kind_name AND floor > low;
END $$;
REVOKE ALL ON FUNCTION angela_queue.claim_floor_lower(text, text, double precision)
    FROM PUBLIC;

-- After each insert statement (migration 0012, plus the floors). A producer under
-- REPEATABLE READ or SERIALIZABLE notifies whether or not a worker waits: its snapshot may
-- predate the flag, and a lost wake-up would cost a poll interval.
CREATE OR REPLACE FUNCTION angela_queue.task_notify_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q text;
    low record;
    read_committed boolean := current_setting('transaction_isolation') = 'read committed';
BEGIN
    FOR q IN SELECT DISTINCT queue FROM new_tasks WHERE status = 'pending' AND ready
              ORDER BY queue LOOP
        PERFORM pg_advisory_xact_lock_shared(1095827715, hashtext(q));
        FOR low IN SELECT kind, min(sort_key) AS sort_key FROM new_tasks
                    WHERE queue = q AND status = 'pending' AND ready GROUP BY kind LOOP
            PERFORM angela_queue.claim_floor_lower(q, low.kind, low.sort_key);
        END LOOP;
        UPDATE angela_queue.queue_waiters SET waiting = false WHERE queue = q AND waiting;
        IF FOUND OR NOT read_committed THEN
            PERFORM pg_notify('angela_queue', q);
        END IF;
    END LOOP;
    RETURN NULL;
END $$;

-- A row that becomes claimable, or claimable earlier, by an update.
CREATE FUNCTION angela_queue.task_floor_updated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM angela_queue.claim_floor_lower(NEW.queue, NEW.kind, NEW.sort_key);
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_floor_updated AFTER UPDATE ON angela_queue.tasks FOR EACH ROW
    WHEN (NEW.status = 'pending' AND NEW.ready
          AND (OLD.status <> 'pending' OR NOT OLD.ready OR NEW.sort_key < OLD.sort_key
               OR NEW.queue <> OLD.queue OR NEW.kind <> OLD.kind))
    EXECUTE FUNCTION angela_queue.task_floor_updated();

-- Raise the floors of queue_name's kinds, if no transaction of the queue that may make a
-- task claimable is in flight (otherwise nothing: the next call tries again). A floor
-- raised less than min_interval_s ago is left alone: every raise leaves a row version that
-- a long transaction keeps too, and each claim reads past them. Returns the number of
-- floors written.
CREATE FUNCTION angela_queue.claim_floor_raise(queue_name text, kinds text[],
                                               min_interval_s double precision DEFAULT 1,
                                               sweep_every_s double precision DEFAULT 60)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k text;
    prior angela_queue.claim_floors;
    sweep boolean;
    first_key double precision;
    written integer := 0;
BEGIN
    IF NOT pg_try_advisory_xact_lock(1095827715, hashtext(queue_name)) THEN
        RETURN 0;
    END IF;
    FOR k IN SELECT DISTINCT unnest(kinds) ORDER BY 1 LOOP
        SELECT * INTO prior FROM angela_queue.claim_floors f
         WHERE f.queue = queue_name AND f.kind = k;
        sweep := prior.floor IS NULL
                 OR prior.swept_at < now() - make_interval(secs => sweep_every_s);
        CONTINUE WHEN NOT sweep
                      AND prior.raised_at > now() - make_interval(secs => min_interval_s);
        SELECT t.sort_key INTO first_key FROM angela_queue.tasks t
         WHERE t.status = 'pending' AND t.ready AND t.queue = queue_name AND t.kind = k
           AND t.sort_key >= CASE WHEN sweep THEN '-infinity' ELSE prior.floor END
         ORDER BY t.sort_key LIMIT 1;
        first_key := coalesce(first_key, 'infinity');
        IF prior.floor IS DISTINCT FROM first_key OR sweep THEN
            INSERT INTO angela_queue.claim_floors AS f (queue, kind, floor, swept_at)
            VALUES (queue_name, k, first_key, CASE WHEN sweep THEN now() ELSE '-infinity' END)
            ON CONFLICT (queue, kind) DO UPDATE
               SET floor = EXCLUDED.floor, raised_at = now(),
                   swept_at = CASE WHEN sweep THEN now() ELSE f.swept_at END;
            written := written + 1;
        END IF;
    END LOOP;
    RETURN written;
END $$;
REVOKE ALL ON FUNCTION
    angela_queue.claim_floor_raise(text, text[], double precision, double precision) FROM PUBLIC;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'angela_queue_worker') THEN
        GRANT SELECT ON angela_queue.claim_floors TO angela_queue_worker;
        GRANT EXECUTE ON FUNCTION
            angela_queue.claim_floor_raise(text, text[], double precision, double precision)
            TO angela_queue_worker;
    END IF;
END $$;
"""

DOWNGRADE = r"""
DROP TRIGGER IF EXISTS tasks_floor_updated ON angela_queue.tasks;
DROP FUNCTION IF EXISTS angela_queue.task_floor_updated();
DROP FUNCTION IF EXISTS
    angela_queue.claim_floor_raise(text, text[], double precision, double precision);
CREATE OR REPLACE FUNCTION angela_queue.task_notify_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    q text;
BEGIN
    FOR q IN SELECT DISTINCT queue FROM new_tasks WHERE status = 'pending' AND ready
              ORDER BY queue LOOP
        PERFORM pg_advisory_xact_lock_shared(1095827715, hashtext(q));
        UPDATE angela_queue.queue_waiters SET waiting = false WHERE queue = q AND waiting;
        IF FOUND THEN
            PERFORM pg_notify('angela_queue', q);
        END IF;
    END LOOP;
    RETURN NULL;
END $$;
DROP FUNCTION IF EXISTS angela_queue.claim_floor_lower(text, text, double precision);
DROP TABLE IF EXISTS angela_queue.claim_floors;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
