"""send runs and the delivery ledger

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "send_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("issue", sa.String(200), nullable=False, index=True),
        sa.Column("digest_path", sa.String(1000), nullable=False),
        sa.Column("digest_sha256", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(998), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("reason", sa.Text),
        sa.Column("lease_owner", sa.String(200)),
        sa.Column("lease_until", TIMESTAMP),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("send_runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("reader_id", sa.Integer, sa.ForeignKey("readers.id", ondelete="SET NULL"), index=True),
        sa.Column("variant", sa.String(300), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("message_id", sa.String(200)),
        sa.Column("batch_key", sa.String(100), index=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.UniqueConstraint("run_id", "reader_id"),
    )
    op.create_index("ix_deliveries_run_state", "deliveries", ["run_id", "state", "id"])


def downgrade() -> None:
    op.drop_table("deliveries")
    op.drop_table("send_runs")
