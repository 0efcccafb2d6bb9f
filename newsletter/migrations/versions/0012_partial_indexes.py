"""partial indexes on deliveries.message_id and deliveries.batch_key: a new run's queued rows,
which have neither, no longer write an entry into either index

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

COLUMNS = ("message_id", "batch_key")


def upgrade() -> None:
    for column in COLUMNS:
        op.drop_index(f"ix_deliveries_{column}", table_name="deliveries")
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(f"ix_deliveries_{column}", "deliveries", [column], sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    for column in COLUMNS:
        op.drop_index(f"ix_deliveries_{column}", table_name="deliveries")
        op.create_index(f"ix_deliveries_{column}", "deliveries", [column])
