"""epoch_minutes becomes inlinable: it was called as a SQL function once per row.

The function is declared IMMUTABLE, but its body, extract(epoch FROM timestamptz), is only
STABLE (other fields of a timestamptz depend on the session's time zone), and PostgreSQL
never inlines a function whose body is more volatile than its declaration. Each call
therefore ran through the SQL-function executor: once per candidate in every claim, and
once per row in every insert. The same number computed from an interval, whose epoch does
not depend on the time zone, is immutable, and the planner now inlines it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE OR REPLACE FUNCTION angela_queue.epoch_minutes(ts timestamptz) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT extract(epoch FROM ts - timestamptz '1970-01-01 00:00:00+00')::double precision
             / 60 $$;
"""

DOWNGRADE = """
CREATE OR REPLACE FUNCTION angela_queue.epoch_minutes(ts timestamptz) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT extract(epoch FROM ts)::double precision / 60 $$;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
