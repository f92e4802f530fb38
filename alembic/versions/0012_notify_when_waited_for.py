"""Inserts notify only when a worker waits for their queue.

NOTIFY is not free: a transaction that notifies takes one lock for the whole cluster at
commit and keeps it through its WAL flush, so notifying transactions commit one at a time
and group commit is lost (scripts/bench.py measures concurrent commits: "single enqueue,
8 producers at once"). A wake-up is only useful to a worker that sleeps, so a queue now
carries a flag, "a worker waits":

- a worker about to sleep sets its queues' flags (angela_queue.queue_arm) and then claims
  once more before it sleeps;
- an insert statement notifies a queue only if its flag is set, and clears it: the first
  insert after a worker went to sleep wakes it, the following ones (the worker is busy
  again) pay nothing;
- no wake-up is lost in between: a producer holds a shared advisory lock on its queue until
  it commits, and queue_arm takes the same lock exclusively before it sets the flag, so once
  the flag is set every task inserted without a notification is committed and visible to
  the claim that follows.

The flags live in an unlogged table: they are hints, rebuilt by the workers (a worker
re-arms after every reconnect, and a crash empties the table); a missing row means "nobody
waits", and workers without LISTEN never arm (they poll).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE UNLOGGED TABLE angela_queue.queue_waiters (
    queue   text PRIMARY KEY REFERENCES angela_queue.queues (name) ON DELETE CASCADE,
    waiting boolean NOT NULL
);
COMMENT ON TABLE angela_queue.queue_waiters IS
    'per queue: does a worker sleep until the next insert notifies it (see migration 0012)';

-- A worker about to sleep (advisory-lock class 0x41510003, "AQ" 0003; second key
-- hashtext(queue)). The exclusive lock waits for every producer of the queue that has not
-- committed yet. Call it in a transaction of its own, for one queue at a time: holding one
-- lock at a time, a worker can never deadlock with a producer.
CREATE FUNCTION angela_queue.queue_arm(queue_name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1095827715, hashtext(queue_name));
    INSERT INTO angela_queue.queue_waiters (queue, waiting) VALUES (queue_name, true)
    ON CONFLICT (queue) DO UPDATE SET waiting = true WHERE NOT queue_waiters.waiting;
END $$;

-- After each insert statement: the queues that got due tasks, in name order (shared locks
-- taken in one order), each locked shared until commit and notified only if a worker waits.
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

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'angela_queue_producer') THEN
        GRANT SELECT, UPDATE ON angela_queue.queue_waiters TO angela_queue_producer;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'angela_queue_worker') THEN
        GRANT SELECT, INSERT, UPDATE ON angela_queue.queue_waiters TO angela_queue_worker;
    END IF;
END $$;
"""

DOWNGRADE = r"""
CREATE OR REPLACE FUNCTION angela_queue.task_notify_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('angela_queue', n.queue)
       FROM (SELECT DISTINCT queue FROM new_tasks WHERE status = 'pending' AND ready) n;
    RETURN NULL;
END $$;
DROP FUNCTION IF EXISTS angela_queue.queue_arm(text);
DROP TABLE IF EXISTS angela_queue.queue_waiters;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
