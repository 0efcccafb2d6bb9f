"""in-flight batches keep what they were sent with; one unfinished run per issue

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UNFINISHED = sa.text("status <> 'finished'")


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("email", sa.String(320)))
        batch.add_column(sa.Column("token", sa.String(64)))
    with op.batch_alter_table("send_runs") as batch:
        batch.add_column(sa.Column("settings_sha256", sa.String(64)))
    op.create_index("ux_send_runs_unfinished_issue", "send_runs", ["issue"], unique=True,
                    sqlite_where=UNFINISHED, postgresql_where=UNFINISHED)


def downgrade() -> None:
    op.drop_index("ux_send_runs_unfinished_issue", "send_runs")
    with op.batch_alter_table("send_runs") as batch:
        batch.drop_column("settings_sha256")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("token")
        batch.drop_column("email")
