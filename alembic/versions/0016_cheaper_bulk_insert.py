"""Bulk enqueue and the insert trigger, cheaper on the server (same results).

Measured with 5,000-task batches, task_insert_many spent about a third of its time outside
the INSERT itself. Three of those costs go:

- the boost rules are read once per batch into two arrays, instead of a scan of
  boost_rules (and its aggregate) for every row;
- the result no longer joins the inserted rows back to the input: every row of an
  unbounded queue is inserted as pending or the whole statement fails, so the priced
  input is the result;
- the statement trigger reads the inserted rows once (each queue's kinds and their lowest
  sort_key in one grouped query) instead of once for the queues and again per queue.

Server CPU per bulk-enqueued task, batches of 5,000 in chunks of 500 on this project's
2-core machine: about 20 µs before, 16 µs after; `make bench`'s bulk enqueue rose by
15–35 % with it. tests/integration/test_bulk_insert.py still compares every column with
the same tasks inserted one by one, and test_migrations.py that a downgrade restores the
0015 functions exactly.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE OR REPLACE FUNCTION angela_queue.task_insert_many(
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
    rule_predicates jsonpath[];
    rule_boosts smallint[];
    bounded boolean;
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
    -- The enabled rules, read once for the batch rather than scanned again for each row.
    SELECT coalesce(array_agg(r.predicate), '{}'), coalesce(array_agg(r.boost), '{}')
      INTO rule_predicates, rule_boosts
      FROM angela_queue.boost_rules r WHERE r.enabled;

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
                  FROM unnest(rule_predicates, rule_boosts) AS r(predicate, boost)
                 WHERE coalesce(jsonb_path_match(i.payload, r.predicate, vars, true), false)) b
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
        RETURNING t.id
    )
    -- Every row of an unbounded queue is inserted pending (an invalid one fails the whole
    -- statement): the result needs no join with what was inserted.
    SELECT x.ord, x.id, 'pending'::text FROM tiered x;
    PERFORM set_config('angela_queue.trusted_insert', '', true);

    -- Bounded queues: through the trigger, which takes the queue's lock and decides.
    SELECT EXISTS (SELECT FROM angela_queue.queues q
                    WHERE q.max_size IS NOT NULL
                      AND q.name IN (SELECT coalesce(u.queue, 'default')
                                       FROM unnest(p_queues) AS u(queue))) INTO bounded;
    IF NOT bounded THEN
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

-- After each insert statement (migrations 0012 and 0014), reading the new rows once.
CREATE OR REPLACE FUNCTION angela_queue.task_notify_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q text;
    kinds text[];
    lows double precision[];
    read_committed boolean := current_setting('transaction_isolation') = 'read committed';
BEGIN
    -- One pass over the inserted rows: per queue, each kind's lowest sort_key.
    FOR q, kinds, lows IN
        SELECT g.queue, array_agg(g.kind ORDER BY g.kind), array_agg(g.low ORDER BY g.kind)
          FROM (SELECT n.queue, n.kind, min(n.sort_key) AS low FROM new_tasks n
                 WHERE n.status = 'pending' AND n.ready GROUP BY n.queue, n.kind) g
         GROUP BY g.queue ORDER BY g.queue LOOP
        PERFORM pg_advisory_xact_lock_shared(1095827715, hashtext(q));
        FOR i IN 1 .. cardinality(kinds) LOOP
            PERFORM angela_queue.claim_floor_lower(q, kinds[i], lows[i]);
        END LOOP;
        UPDATE angela_queue.queue_waiters SET waiting = false WHERE queue = q AND waiting;
        IF FOUND OR NOT read_committed THEN
            PERFORM pg_notify('angela_queue', q);
        END IF;
    END LOOP;
    RETURN NULL;
END $$;
"""


def _frozen_text(module_file: str, name: str) -> str:
    """A constant of an earlier migration (frozen files): what downgrade restores."""
    spec = importlib.util.spec_from_file_location(
        module_file, Path(__file__).with_name(module_file)
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(getattr(module, name))


def _function(text: str, name: str) -> str:
    """The CREATE … FUNCTION statement of ``name`` in ``text``, as CREATE OR REPLACE."""
    match = re.search(
        rf"CREATE (?:OR REPLACE )?FUNCTION angela_queue\.{name}\(.*?\nEND \$\$;\n", text, re.S
    )
    assert match is not None, name
    return match.group(0).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(_function(_frozen_text("0010_bulk_insert.py", "INSERT_MANY"), "task_insert_many"))
    op.execute(_function(_frozen_text("0014_claim_floors.py", "UPGRADE"), "task_notify_inserted"))
