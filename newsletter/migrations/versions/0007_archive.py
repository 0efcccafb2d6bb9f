"""the archive: each sent issue's digest as it was sent, so the web archive needs no digest files

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "issues",
        sa.Column("slug", sa.String(200), primary_key=True),
        sa.Column("title", sa.String(998), nullable=False),
        sa.Column("date", sa.String(10)),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("digest_sha256", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("issues")
