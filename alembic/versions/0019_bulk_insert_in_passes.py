"""Bulk enqueue: the rules in one pass per rule, the batch inserted without a sort.

Profiled with auto_explain (500-task statements, the default three rules), about a third
of task_insert_many's time was outside the table's own cost:

- the boost rules ran as a LATERAL subquery (an unnest and an aggregate) once per task;
  each enabled rule is now one pass over the payloads, adding its boost where it matches;
- the target waits came from a join with ``tiers`` whose hash reordered the rows, so the
  insert sorted the whole priced batch (payloads included) back into order; they are now
  read once per batch, and the rows go in as they come (their ids are given in order
  already);
- the priced rows were kept in a materialized CTE to be returned; with no bounded queue in
  the batch, the result is every position with its id, built from the id array.

Rows are priced exactly as before: tests/integration/test_bulk_insert.py compares every
column with the same tasks inserted one by one. Server CPU per bulk-enqueued task, batches
of 500, interleaved with the 0016 function on this project's 2-core machine: 15.0 → 13.5
µs (16 rounds; /tmp/s9/var.py in docs/discussions.md, "Session 9").

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-01
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import op

revision = "0019"
down_revision = "0018"
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
    rule record;
    boosts integer[];
    matched bigint;
    tier_waits interval[];
    priced bigint;
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
    -- Each enabled rule in one pass over the payloads, its boost added where it matches.
    boosts := array_fill(0, ARRAY[n]);
    FOR rule IN SELECT r.predicate, r.boost FROM angela_queue.boost_rules r WHERE r.enabled LOOP
        FOR matched IN
            SELECT u.k FROM unnest(p_payloads) WITH ORDINALITY AS u(payload, k)
             WHERE coalesce(jsonb_path_match(coalesce(u.payload, '{}'), rule.predicate, vars,
                                             true), false)
        LOOP
            boosts[matched] := boosts[matched] + rule.boost;
        END LOOP;
    END LOOP;
    -- Each tier's target wait (critical, high, medium, low) unless a queue sets its own.
    tier_waits := ARRAY(SELECT coalesce(tr.target_wait, angela_queue.tier_target_wait(v.tier))
                          FROM unnest(ARRAY['critical', 'high', 'medium', 'low'])
                               WITH ORDINALITY AS v(tier, k)
                          LEFT JOIN angela_queue.tiers tr ON tr.tier = v.tier
                         ORDER BY v.k);

    -- Unbounded queues: priced here, exactly as task_before_insert prices one task.
    PERFORM set_config('angela_queue.trusted_insert', 'on', true);
    INSERT INTO angela_queue.tasks
           (id, queue, kind, payload, priority, boost, tier, status, enqueued_at, run_at,
            aging_from, sort_key, ready, deadline_at, attempts, max_attempts, timeout_s,
            batch_key)
    SELECT x.id, x.queue, x.kind, x.payload, x.priority, x.boost, angela_queue.tier_of(x.base),
           'pending', x.enqueued_at, x.run_at, x.aging_from,
           x.aging_rate * angela_queue.epoch_minutes(x.aging_from) - x.base,
           x.run_at <= now(),
           x.aging_from + coalesce((x.target_waits ->> angela_queue.tier_of(x.base))::interval,
                                   tier_waits[CASE WHEN x.base >= 9 THEN 1 WHEN x.base >= 7 THEN 2
                                                   WHEN x.base >= 5 THEN 3 ELSE 4 END]),
           0, x.max_attempts, x.timeout_s, coalesce(x.batch_key, x.kind)
      FROM (SELECT i.*, q.aging_rate, q.target_waits,
                   greatest(1, least(10, i.priority + i.boost)) AS base,
                   CASE WHEN i.run_at > now() THEN i.run_at ELSE i.enqueued_at END AS aging_from
              FROM (SELECT ids[u.k] AS id, coalesce(u.queue, 'default') AS queue, u.kind,
                           coalesce(u.payload, '{}') AS payload,
                           coalesce(u.priority, 5) AS priority, boosts[u.k]::smallint AS boost,
                           coalesce(u.enqueued_at, now()) AS enqueued_at,
                           coalesce(u.run_at, now()) AS run_at,
                           coalesce(u.max_attempts, 5) AS max_attempts,
                           coalesce(u.timeout_s, 60) AS timeout_s, u.batch_key
                      FROM unnest(p_queues, p_kinds, p_payloads, p_priorities, p_run_ats,
                                  p_enqueued_ats, p_max_attempts, p_timeouts, p_batch_keys)
                           WITH ORDINALITY AS u(queue, kind, payload, priority, run_at,
                                                enqueued_at, max_attempts, timeout_s,
                                                batch_key, k)) i
              JOIN angela_queue.queues q ON q.name = i.queue AND q.max_size IS NULL) x;
    GET DIAGNOSTICS priced = ROW_COUNT;
    PERFORM set_config('angela_queue.trusted_insert', '', true);
    -- Every row of an unbounded queue is inserted pending (an invalid one fails the whole
    -- statement): the result needs nothing from what was inserted.
    IF priced = n THEN
        RETURN QUERY SELECT g, ids[g], 'pending'::text FROM generate_series(1, n) AS g;
        RETURN;
    END IF;
    RETURN QUERY
    SELECT u.k::integer, ids[u.k], 'pending'::text
      FROM unnest(p_queues) WITH ORDINALITY AS u(queue, k)
      JOIN angela_queue.queues q ON q.name = coalesce(u.queue, 'default') AND q.max_size IS NULL;

    -- Bounded queues: through the trigger, which takes the queue's lock and decides.
    RETURN QUERY
    WITH input AS (
        SELECT u.k::integer AS ord, ids[u.k] AS id, u.queue, u.kind, u.payload, u.priority,
               u.run_at, u.enqueued_at, u.max_attempts, u.timeout_s, u.batch_key
          FROM unnest(p_queues, p_kinds, p_payloads, p_priorities, p_run_ats, p_enqueued_ats,
                      p_max_attempts, p_timeouts, p_batch_keys) WITH ORDINALITY
               AS u(queue, kind, payload, priority, run_at, enqueued_at, max_attempts, timeout_s,
                    batch_key, k)
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
    cheaper = _migration("0016_cheaper_bulk_insert.py")
    op.execute(cheaper._function(cheaper.UPGRADE, "task_insert_many"))
