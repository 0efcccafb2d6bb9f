"""workers: batches leased one by one, the run's failure streak, who took part in a run, and the
provider's shared rate limit

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

TIMESTAMP = sa.DateTime(timezone=True)

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "send_batches",
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("send_runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("lease_until", TIMESTAMP, nullable=False),
        sa.Column("claimed_at", TIMESTAMP, nullable=False),
    )
    op.create_index("ix_send_batches_run_lease", "send_batches", ["run_id", "lease_until"])
    # Batches a stopped process left in flight: leased by no one alive, so the next sender takes
    # them over at once, claimed when their deliveries were (an idempotency key lives 24 hours).
    op.execute("INSERT INTO send_batches (key, run_id, owner, lease_until, claimed_at) "
               "SELECT batch_key, run_id, 'before the upgrade', MIN(updated_at), MIN(updated_at) "
               "FROM deliveries WHERE state = 'sending' AND batch_key IS NOT NULL GROUP BY batch_key, run_id")
    op.create_table(
        "run_workers",
        sa.Column("run_id", sa.Integer, sa.ForeignKey("send_runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("owner", sa.String(200), primary_key=True),
        sa.Column("sent", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("requests", sa.Integer, nullable=False, server_default="0"),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("seen_at", TIMESTAMP, nullable=False),
        sa.Column("left_at", TIMESTAMP),
    )
    op.create_table(
        "send_limits",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("next_at", sa.Float, nullable=False),
    )
    with op.batch_alter_table("send_runs") as batch:
        batch.add_column(sa.Column("failures", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("send_runs") as batch:
        batch.drop_column("failures")
    op.drop_table("send_limits")
    op.drop_table("run_workers")
    op.drop_index("ix_send_batches_run_lease", "send_batches")
    op.drop_table("send_batches")
