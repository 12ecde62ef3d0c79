"""The ledger: each recording's token usage (`usage`, one row per interaction whose answer
carried usage) and the sha256 of its body as it arrived (`interactions.body_sha256`), which
every replay compares with what it sent.

Recordings made before this revision have neither: they replay as before, unverified and
without tokens (`rrproxy rerecord` records them again with both).

Revision ID: 0006_usage_ledger
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_usage_ledger"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A nullable column: SQLite adds it in place (no table rebuild, nothing cascades).
    op.add_column("interactions", sa.Column("body_sha256", sa.String(length=64), nullable=True))
    op.create_table(
        "usage",
        sa.Column("interaction_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cached_tokens", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["interaction_id"],
            ["interactions.id"],
            name=op.f("fk_usage_interaction_id_interactions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("interaction_id", name=op.f("pk_usage")),
    )


def downgrade() -> None:
    op.drop_table("usage")
    with op.batch_alter_table("interactions") as batch:
        batch.drop_column("body_sha256")
