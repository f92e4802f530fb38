"""rule_vars_object() in PL/pgSQL: the insert trigger stops re-planning it in every transaction.

The insert trigger (task_before_insert) reads the boost rules' variables once per row with
``angela_queue.rule_vars_object()``. As a LANGUAGE sql function with an aggregate it cannot
be inlined, and PostgreSQL (before 18) plans a non-inlined SQL function's body afresh
each time the calling expression is set up: for a PL/pgSQL assignment, once per
transaction. A producer whose transaction is one INSERT paid that planning on every
enqueue: about 45 µs of the trigger's ~120 µs on this project's machine (EXPLAIN ANALYZE
of a single autocommit insert; docs/discussions.md, "Session 10"). A PL/pgSQL function
keeps its plan for the session. Same result, same snapshot (STABLE), same privileges
(CREATE OR REPLACE keeps them); every caller (the two insert paths, the rule checks,
``angela-queue rules test``) gains alike.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE OR REPLACE FUNCTION angela_queue.rule_vars_object() RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN (SELECT coalesce(jsonb_object_agg(name, value), '{}') FROM angela_queue.rule_vars);
END $$;
"""

DOWNGRADE = r"""
CREATE OR REPLACE FUNCTION angela_queue.rule_vars_object() RETURNS jsonb
LANGUAGE sql STABLE
AS $$ SELECT coalesce(jsonb_object_agg(name, value), '{}') FROM angela_queue.rule_vars $$;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
