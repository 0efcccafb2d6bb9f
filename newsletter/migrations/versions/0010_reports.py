"""reports: what the provider said about each email after the send (delivered, bounced, opened,
clicked, complained); readers count transient bounces in a row

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

TIMESTAMP = sa.DateTime(timezone=True)

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reports",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("report_id", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("message_id", sa.String(200)),
        sa.Column("delivery_id", sa.Integer, sa.ForeignKey("deliveries.id", ondelete="SET NULL")),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("send_runs.id", ondelete="SET NULL")),
        sa.Column("reader_id", sa.Integer, sa.ForeignKey("readers.id", ondelete="SET NULL")),
        sa.Column("bounce_type", sa.String(16)),
        sa.Column("detail", sa.Text),
        sa.Column("link", sa.Text),
        sa.Column("occurred_at", TIMESTAMP, nullable=False),
        sa.Column("received_at", TIMESTAMP, nullable=False),
        sa.UniqueConstraint("source", "report_id", name="uq_reports_source_report_id"),
    )
    for column in ("kind", "message_id", "delivery_id", "run_id", "reader_id", "occurred_at"):
        op.create_index(f"ix_reports_{column}", "reports", [column])
    op.create_index("ix_deliveries_message_id", "deliveries", ["message_id"])
    with op.batch_alter_table("readers") as batch:
        batch.add_column(sa.Column("soft_bounces", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("soft_bounce_run", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("readers") as batch:
        batch.drop_column("soft_bounce_run")
        batch.drop_column("soft_bounces")
    op.drop_index("ix_deliveries_message_id", "deliveries")
    op.drop_table("reports")
