"""Bulk enqueue computed for the whole batch at once, not row by row.

The row trigger (task_before_insert, migration 0003) prices every task with a handful of
queries: the queue, the rule variables, the boost rules, the tier's target wait. For one
task that is nothing; for a bulk enqueue it is four fifths of the cost of each row.
task_insert_many takes a batch as arrays and computes the same columns with one join for
the whole batch, then inserts them with the row trigger switched off for those rows only.

The switch is safe because only the schema's owner can use it: the trigger is skipped when
the transaction-local setting angela_queue.trusted_insert is 'on' AND the current user is
the owner, which is the case inside task_insert_many (SECURITY DEFINER) and nowhere a
producer can reach: a producer that sets the flag still goes through the trigger, and the
owner could drop the trigger anyway. Tasks of bounded queues go through the trigger even in
task_insert_many (its per-queue lock and count decide each of them), so bounds, drops and
the 'skip' overflow mode behave exactly as for any other insert.

The batch's rows are priced by the same expressions as the trigger's; the test
tests/integration/test_bulk_insert.py inserts the same tasks both ways in one transaction
and compares every column, so the two cannot drift apart unnoticed.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# The owner's name is written into the trigger's condition when it is created (current_user
# is compared as a constant: the condition costs no query per row).
TRIGGER = """
DO $$
BEGIN
    DROP TRIGGER tasks_before_insert ON angela_queue.tasks;
    EXECUTE format($sql$
        CREATE TRIGGER tasks_before_insert BEFORE INSERT ON angela_queue.tasks FOR EACH ROW
        WHEN (current_setting('angela_queue.trusted_insert', true) IS DISTINCT FROM 'on'
              OR current_user <> %L)
        EXECUTE FUNCTION angela_queue.task_before_insert()$sql$, current_user);
END $$;
"""

INSERT_MANY = r"""
-- Returns one row per inserted task: its position in the arrays (1-based), its id and its
-- status ('pending', or 'dropped' by a full bounded queue). A task of a full bounded queue
-- skipped in the 'skip' overflow mode has no row.
CREATE FUNCTION angela_queue.task_insert_many(
    p_queues text[], p_kinds text[], p_payloads jsonb[], p_priorities smallint[],
    p_run_ats timestamptz[], p_enqueued_ats timestamptz[], p_max_attempts smallint[],
    p_timeouts integer[], p_batch_keys text[])
RETURNS TABLE (ord integer, id bigint, status text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer := cardinality(p_kinds);
    ids bigint[];
    seq regclass;
    vars jsonb := angela_queue.rule_vars_object();
    max_bytes integer := coalesce(
        nullif(current_setting('angela_queue.max_payload_bytes', true), '')::integer, 1048576);
    bad record;
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    IF cardinality(p_queues) <> n OR cardinality(p_payloads) <> n
       OR cardinality(p_priorities) <> n OR cardinality(p_run_ats) <> n
       OR cardinality(p_enqueued_ats) <> n OR cardinality(p_max_attempts) <> n
       OR cardinality(p_timeouts) <> n OR cardinality(p_batch_keys) <> n THEN
        RAISE EXCEPTION 'task_insert_many: every array needs % elements', n
            USING ERRCODE = '22023';
    END IF;
    -- The trigger's checks, for the whole batch, with the trigger's messages.
    SELECT coalesce(u.queue, 'default') AS queue INTO bad
      FROM unnest(p_queues) AS u(queue)
     WHERE NOT EXISTS (SELECT FROM angela_queue.queues q
                        WHERE q.name = coalesce(u.queue, 'default'))
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'unknown queue "%"', bad.queue
            USING ERRCODE = 'AQ001',
                  HINT = 'create it with: angela-queue queue set ' || bad.queue;
    END IF;
    SELECT pg_column_size(u.payload) AS size INTO bad
      FROM unnest(p_payloads) AS u(payload)
     WHERE pg_column_size(u.payload) > max_bytes
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'payload of % bytes exceeds the limit of % bytes', bad.size, max_bytes
            USING ERRCODE = 'AQ003';
    END IF;
    -- Ids in the order of the arrays, whichever path each task takes below.
    seq := pg_get_serial_sequence('angela_queue.tasks', 'id')::regclass;
    ids := ARRAY(SELECT nextval(seq) FROM generate_series(1, n));

    -- Unbounded queues: priced here, exactly as task_before_insert prices one task.
    PERFORM set_config('angela_queue.trusted_insert', 'on', true);
    RETURN QUERY
    WITH input AS (
        SELECT u.ord::integer AS ord, ids[u.ord] AS id,
               coalesce(u.queue, 'default') AS queue, u.kind,
               coalesce(u.payload, '{}') AS payload, coalesce(u.priority, 5) AS priority,
               coalesce(u.enqueued_at, now()) AS enqueued_at, coalesce(u.run_at, now()) AS run_at,
               coalesce(u.max_attempts, 5) AS max_attempts, coalesce(u.timeout_s, 60) AS timeout_s,
               u.batch_key
          FROM unnest(p_queues, p_kinds, p_payloads, p_priorities, p_run_ats, p_enqueued_ats,
                      p_max_attempts, p_timeouts, p_batch_keys) WITH ORDINALITY
               AS u(queue, kind, payload, priority, run_at, enqueued_at, max_attempts, timeout_s,
                    batch_key, ord)
    ), priced AS (
        SELECT i.*, q.aging_rate, q.target_waits, b.boost,
               greatest(1, least(10, i.priority + b.boost)) AS base,
               CASE WHEN i.run_at > now() THEN i.run_at ELSE i.enqueued_at END AS aging_from
          FROM input i
          JOIN angela_queue.queues q ON q.name = i.queue AND q.max_size IS NULL
         CROSS JOIN LATERAL (
                SELECT coalesce(sum(r.boost), 0)::smallint AS boost
                  FROM angela_queue.boost_rules r
                 WHERE r.enabled
                   AND coalesce(jsonb_path_match(i.payload, r.predicate, vars, true), false)) b
    ), tiered AS (
        SELECT p.*, angela_queue.tier_of(p.base) AS tier FROM priced p
    ), inserted AS (
        INSERT INTO angela_queue.tasks AS t
               (id, queue, kind, payload, priority, boost, tier, status, enqueued_at, run_at,
                aging_from, sort_key, ready, deadline_at, attempts, max_attempts, timeout_s,
                batch_key)
        SELECT x.id, x.queue, x.kind, x.payload, x.priority, x.boost, x.tier, 'pending',
               x.enqueued_at, x.run_at, x.aging_from,
               x.aging_rate * angela_queue.epoch_minutes(x.aging_from) - x.base,
               x.run_at <= now(),
               x.aging_from + coalesce((x.target_waits ->> x.tier)::interval, tr.target_wait,
                                       angela_queue.tier_target_wait(x.tier)),
               0, x.max_attempts, x.timeout_s, coalesce(x.batch_key, x.kind)
          FROM tiered x
          LEFT JOIN angela_queue.tiers tr ON tr.tier = x.tier
         ORDER BY x.ord
        RETURNING t.id, t.status
    )
    SELECT i.ord, i.id, t.status FROM inserted t JOIN input i ON i.id = t.id;
    PERFORM set_config('angela_queue.trusted_insert', '', true);

    -- Bounded queues: through the trigger, which takes the queue's lock and decides.
    IF NOT EXISTS (SELECT FROM angela_queue.queues q
                    WHERE q.max_size IS NOT NULL
                      AND q.name IN (SELECT coalesce(u.queue, 'default')
                                       FROM unnest(p_queues) AS u(queue))) THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH input AS (
        SELECT u.ord::integer AS ord, ids[u.ord] AS id, u.queue, u.kind, u.payload, u.priority,
               u.run_at, u.enqueued_at, u.max_attempts, u.timeout_s, u.batch_key
          FROM unnest(p_queues, p_kinds, p_payloads, p_priorities, p_run_ats, p_enqueued_ats,
                      p_max_attempts, p_timeouts, p_batch_keys) WITH ORDINALITY
               AS u(queue, kind, payload, priority, run_at, enqueued_at, max_attempts, timeout_s,
                    batch_key, ord)
    ), inserted AS (
        INSERT INTO angela_queue.tasks AS t
               (id, queue, kind, payload, priority, run_at, enqueued_at, max_attempts,
                timeout_s, batch_key)
        SELECT i.id, i.queue, i.kind, i.payload, i.priority, i.run_at, i.enqueued_at,
               i.max_attempts, i.timeout_s, i.batch_key
          FROM input i
          JOIN angela_queue.queues q ON q.name = coalesce(i.queue, 'default')
                                    AND q.max_size IS NOT NULL
         ORDER BY i.ord
        RETURNING t.id, t.status
    )
    SELECT i.ord, i.id, t.status FROM inserted t JOIN input i ON i.id = t.id;
END $$;

REVOKE ALL ON FUNCTION angela_queue.task_insert_many(
    text[], text[], jsonb[], smallint[], timestamptz[], timestamptz[], smallint[], integer[],
    text[]) FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'angela_queue_producer') THEN
        GRANT EXECUTE ON FUNCTION angela_queue.task_insert_many(
            text[], text[], jsonb[], smallint[], timestamptz[], timestamptz[], smallint[],
            integer[], text[]) TO angela_queue_producer;
    END IF;
END $$;
"""

DOWNGRADE = """
DROP FUNCTION IF EXISTS angela_queue.task_insert_many(
    text[], text[], jsonb[], smallint[], timestamptz[], timestamptz[], smallint[], integer[],
    text[]);
DROP TRIGGER tasks_before_insert ON angela_queue.tasks;
CREATE TRIGGER tasks_before_insert BEFORE INSERT ON angela_queue.tasks
    FOR EACH ROW EXECUTE FUNCTION angela_queue.task_before_insert();
"""


def upgrade() -> None:
    op.execute(TRIGGER + INSERT_MANY)


def downgrade() -> None:
    op.execute(DOWNGRADE)
