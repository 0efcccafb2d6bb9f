"""a run can be cancelled: cancelled runs, like finished ones, leave room for a new run of the issue

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEX = "ux_send_runs_unfinished_issue"
OPEN = sa.text("status NOT IN ('finished', 'cancelled')")
UNFINISHED = sa.text("status <> 'finished'")


def upgrade() -> None:
    op.drop_index(INDEX, "send_runs")
    op.create_index(INDEX, "send_runs", ["issue"], unique=True, sqlite_where=OPEN, postgresql_where=OPEN)


def downgrade() -> None:
    op.drop_index(INDEX, "send_runs")
    op.create_index(INDEX, "send_runs", ["issue"], unique=True,
                    sqlite_where=UNFINISHED, postgresql_where=UNFINISHED)
