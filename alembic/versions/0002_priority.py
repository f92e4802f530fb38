"""Priority engine: configurable target waits, rule variables, seeded boost rules,
re-ranking on an aging-rate change, and the tier_slo view.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- Target waits per tier: settings, not constants (per-queue overrides on queues).
CREATE TABLE angela_queue.tiers (
    tier        text PRIMARY KEY
        CONSTRAINT tiers_tier_check CHECK (tier IN ('critical', 'high', 'medium', 'low')),
    min_base    smallint NOT NULL,
    max_base    smallint NOT NULL,
    target_wait interval NOT NULL
        CONSTRAINT tiers_target_wait_check CHECK (target_wait >= interval '0')
);
INSERT INTO angela_queue.tiers (tier, min_base, max_base, target_wait) VALUES
    ('critical', 9, 10, interval '1 second'),
    ('high',     7,  8, interval '1 minute'),
    ('medium',   5,  6, interval '5 minutes'),
    ('low',      1,  4, interval '30 minutes');

ALTER TABLE angela_queue.queues
    ADD COLUMN target_waits jsonb NOT NULL DEFAULT '{}'
        CONSTRAINT queues_target_waits_check CHECK (jsonb_typeof(target_waits) = 'object');
COMMENT ON COLUMN angela_queue.queues.target_waits IS
    'Per-queue target waits overriding angela_queue.tiers, e.g. {"high": "30 seconds"}';

-- The first start of a task, kept across retries: the tier SLO is about the first wait.
ALTER TABLE angela_queue.tasks ADD COLUMN first_started_at timestamptz;
CREATE INDEX tasks_first_started_at_idx ON angela_queue.tasks (first_started_at)
    WHERE first_started_at IS NOT NULL;

-- Variables boost-rule predicates may use ($author); passed to every evaluation.
CREATE TABLE angela_queue.rule_vars (
    name  text PRIMARY KEY CONSTRAINT rule_vars_name_check CHECK (name ~ '^[a-z_][a-z0-9_]*$'),
    value jsonb NOT NULL
);
INSERT INTO angela_queue.rule_vars (name, value) VALUES ('author', '"david"');

CREATE FUNCTION angela_queue.rule_vars_object() RETURNS jsonb
LANGUAGE sql STABLE
AS $$ SELECT coalesce(jsonb_object_agg(name, value), '{}') FROM angela_queue.rule_vars $$;

-- Refuse a rule the database could not evaluate (e.g. an unknown $variable) before it is
-- stored, so that evaluation at insert can never fail; payload-dependent errors (a missing
-- field, a wrong type, a division by zero) are silenced there and count as no match.
CREATE FUNCTION angela_queue.boost_rule_check() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM jsonb_path_match('{}', NEW.predicate, angela_queue.rule_vars_object(), true);
    RETURN NEW;
END $$;
CREATE TRIGGER boost_rules_check BEFORE INSERT OR UPDATE OF predicate ON angela_queue.boost_rules
    FOR EACH ROW EXECUTE FUNCTION angela_queue.boost_rule_check();

-- A variable still used by a rule cannot be removed.
CREATE FUNCTION angela_queue.rule_var_check_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    remaining jsonb := angela_queue.rule_vars_object() - OLD.name;
    r record;
BEGIN
    FOR r IN SELECT name, predicate FROM angela_queue.boost_rules LOOP
        BEGIN
            PERFORM jsonb_path_match('{}', r.predicate, remaining, true);
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'rule variable "%" is used by boost rule "%"', OLD.name, r.name
                USING ERRCODE = 'AQ004';
        END;
    END LOOP;
    RETURN OLD;
END $$;
CREATE TRIGGER rule_vars_check_delete BEFORE DELETE ON angela_queue.rule_vars
    FOR EACH ROW EXECUTE FUNCTION angela_queue.rule_var_check_delete();

-- Seeded rules (DESIGN.md §2). Emotional: {"emotional": true} or "emotional" in "tags".
-- Urgent: the author writes the word "urgent", any case. Question: the author asks ("?").
INSERT INTO angela_queue.boost_rules (name, predicate, boost, description) VALUES
    ('emotional', '$.emotional == true || $.tags[*] == "emotional"', 2,
     'emotional conversation: {"emotional": true} or "emotional" in "tags"'),
    ('author_urgent',
     '$.author == $author && $.text like_regex "(^|[^[:alnum:]_])urgent([^[:alnum:]_]|$)" flag "i"',
     3, 'the author ($author) writes the word "urgent", any case'),
    ('author_question', '$.author == $author && $.text like_regex "[?]"', 1,
     'a question from the author ($author)')
ON CONFLICT (name) DO NOTHING;  -- an operator's own rule of the same name is kept

-- The insert trigger, now with per-queue/per-tier target waits, rule variables, and the
-- first start kept for the SLO. (Replaces the 0001 version.)
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

-- A new aging rate re-ranks the queue's pending tasks in the same transaction, so the
-- claim order stays true and still comes from the index.
CREATE FUNCTION angela_queue.queue_rerank() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE angela_queue.tasks t
       SET sort_key = NEW.aging_rate * angela_queue.epoch_minutes(t.aging_from)
                      - greatest(1, least(10, t.priority + t.boost))
     WHERE t.queue = NEW.name AND t.status = 'pending';
    RETURN NULL;
END $$;
CREATE TRIGGER queues_rerank AFTER UPDATE OF aging_rate ON angela_queue.queues
    FOR EACH ROW WHEN (OLD.aging_rate IS DISTINCT FROM NEW.aging_rate)
    EXECUTE FUNCTION angela_queue.queue_rerank();

-- Validates per-queue target waits when they are set.
CREATE FUNCTION angela_queue.queue_check_target_waits() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    k text;
BEGIN
    FOR k IN SELECT jsonb_object_keys(NEW.target_waits) LOOP
        IF k NOT IN ('critical', 'high', 'medium', 'low') THEN
            RAISE EXCEPTION 'unknown tier "%" in target_waits', k USING ERRCODE = '22023';
        END IF;
        PERFORM (NEW.target_waits ->> k)::interval;
    END LOOP;
    RETURN NEW;
END $$;
CREATE TRIGGER queues_check_target_waits BEFORE INSERT OR UPDATE OF target_waits
    ON angela_queue.queues FOR EACH ROW EXECUTE FUNCTION angela_queue.queue_check_target_waits();

-- Per queue and tier: the target, the live backlog against it, and the last hour's share
-- of tasks that first started within target (through tasks_first_started_at_idx).
CREATE VIEW angela_queue.tier_slo AS
WITH targets AS (
    SELECT q.name AS queue, t.tier, t.min_base,
           coalesce((q.target_waits ->> t.tier)::interval, t.target_wait) AS target_wait
      FROM angela_queue.queues q CROSS JOIN angela_queue.tiers t
), live AS (
    SELECT queue, tier, count(*) AS pending,
           count(*) FILTER (WHERE deadline_at < now()) AS pending_past_target,
           max(extract(epoch FROM now() - aging_from)) AS oldest_wait_s
      FROM angela_queue.tasks
     WHERE status = 'pending' AND ready
     GROUP BY queue, tier
), started AS (
    SELECT queue, tier, count(*) AS started_1h,
           count(*) FILTER (WHERE first_started_at <= deadline_at) AS met_1h
      FROM angela_queue.tasks
     WHERE first_started_at > now() - interval '1 hour'
     GROUP BY queue, tier
)
SELECT g.queue, g.tier, extract(epoch FROM g.target_wait)::double precision AS target_wait_s,
       coalesce(l.pending, 0) AS pending,
       coalesce(l.pending_past_target, 0) AS pending_past_target,
       l.oldest_wait_s::double precision AS oldest_wait_s,
       coalesce(s.started_1h, 0) AS started_1h,
       coalesce(s.met_1h, 0) AS met_1h,
       CASE WHEN s.started_1h > 0 THEN s.met_1h::double precision / s.started_1h END
           AS met_ratio_1h
  FROM targets g
  LEFT JOIN live l ON l.queue = g.queue AND l.tier = g.tier
  LEFT JOIN started s ON s.queue = g.queue AND s.tier = g.tier
 ORDER BY g.queue, g.min_base DESC;
"""

DOWNGRADE = r"""
DROP VIEW IF EXISTS angela_queue.tier_slo;
DROP TRIGGER IF EXISTS queues_check_target_waits ON angela_queue.queues;
DROP FUNCTION IF EXISTS angela_queue.queue_check_target_waits();
DROP TRIGGER IF EXISTS queues_rerank ON angela_queue.queues;
DROP FUNCTION IF EXISTS angela_queue.queue_rerank();
DELETE FROM angela_queue.boost_rules
 WHERE name IN ('emotional', 'author_urgent', 'author_question');
DROP TRIGGER IF EXISTS boost_rules_check ON angela_queue.boost_rules;
DROP FUNCTION IF EXISTS angela_queue.boost_rule_check();
DROP TRIGGER IF EXISTS rule_vars_check_delete ON angela_queue.rule_vars;
DROP FUNCTION IF EXISTS angela_queue.rule_var_check_delete();
-- Back to the 0001 insert trigger (rules without variables).
CREATE OR REPLACE FUNCTION angela_queue.task_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    rate double precision;
    base integer;
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
    SELECT q.aging_rate INTO rate FROM angela_queue.queues q WHERE q.name = NEW.queue;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown queue "%"', NEW.queue
            USING ERRCODE = 'AQ001',
                  HINT = 'create it with: angela-queue queue set ' || NEW.queue;
    END IF;
    IF pg_column_size(NEW.payload) > max_bytes THEN
        RAISE EXCEPTION 'payload of % bytes exceeds the limit of % bytes',
            pg_column_size(NEW.payload), max_bytes USING ERRCODE = 'AQ003';
    END IF;
    SELECT coalesce(sum(r.boost), 0) INTO NEW.boost
      FROM angela_queue.boost_rules r
     WHERE r.enabled AND coalesce(NEW.payload @@ r.predicate, false);
    base := greatest(1, least(10, NEW.priority + NEW.boost));
    NEW.tier := angela_queue.tier_of(base);
    NEW.batch_key := coalesce(NEW.batch_key, NEW.kind);
    NEW.ready := NEW.run_at <= now();
    NEW.aging_from := CASE WHEN NEW.run_at > now() THEN NEW.run_at ELSE NEW.enqueued_at END;
    NEW.sort_key := rate * angela_queue.epoch_minutes(NEW.aging_from) - base;
    NEW.deadline_at := NEW.aging_from + angela_queue.tier_target_wait(NEW.tier);
    RETURN NEW;
END $$;
DROP FUNCTION IF EXISTS angela_queue.rule_vars_object();
DROP TABLE IF EXISTS angela_queue.rule_vars;
DROP INDEX IF EXISTS angela_queue.tasks_first_started_at_idx;
ALTER TABLE angela_queue.tasks DROP COLUMN IF EXISTS first_started_at;
ALTER TABLE angela_queue.queues DROP COLUMN IF EXISTS target_waits;
DROP TABLE IF EXISTS angela_queue.tiers;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
