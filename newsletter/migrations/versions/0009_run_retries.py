"""run retries: whether time may fix what paused a run, and how often the scheduler tried again

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("send_runs") as batch:
        batch.add_column(sa.Column("pause_transient", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("auto_retries", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("send_runs") as batch:
        batch.drop_column("auto_retries")
        batch.drop_column("pause_transient")
