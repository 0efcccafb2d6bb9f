"""readers, their categories, and suppressed (forgotten) addresses

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "categories",
        sa.Column("slug", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
    )
    op.create_table(
        "readers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(320), nullable=False, unique=True),
        sa.Column("name", sa.String(200)),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("token", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("status_changed_at", TIMESTAMP, nullable=False),
        sa.Column("confirmed_at", TIMESTAMP),
        sa.Column("unsubscribed_at", TIMESTAMP),
        sa.Column("consent_at", TIMESTAMP),
        sa.Column("consent_method", sa.String(16)),
        sa.Column("consent_ip", sa.String(45)),
    )
    op.create_table(
        "reader_categories",
        sa.Column("reader_id", sa.Integer, sa.ForeignKey("readers.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("category", sa.String(64), sa.ForeignKey("categories.slug", ondelete="CASCADE"),
                  primary_key=True, index=True),
    )
    op.create_table(
        "suppressions",
        sa.Column("email_hash", sa.String(64), primary_key=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
    )


def downgrade() -> None:
    for table in ("suppressions", "reader_categories", "readers", "categories"):
        op.drop_table(table)
