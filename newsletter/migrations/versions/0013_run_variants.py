"""run variants: each run keeps its variants as rendered when it was created

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Runs created before this have none: whoever sends them renders their variants from the
    # digest, as before.
    op.create_table(
        "run_variants",
        sa.Column("run_id", sa.Integer, sa.ForeignKey("send_runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("subject", sa.String(998), nullable=False),
        sa.Column("html", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("run_variants")
