"""Mark interactions imported without event timing (`interactions.untimed`).

vcrpy cassettes and browsers' HARs keep a body whole, not its events' times: such an
interaction is one event, and replay sends it at instant pace (`untimed_pace`) unless told
otherwise. Rows written before this migration were recorded by rrproxy (or imported with
the old convention): they stay timed (false).

A plain `ADD COLUMN` with a constant default: SQLite and PostgreSQL add it in place, with no
table copy (batch mode would rebuild `interactions`, whose drop cascades to `events`; see
0003).

Revision ID: 0004_imported_timing
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_imported_timing"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "interactions",
        sa.Column("untimed", sa.Boolean(), server_default=sa.false(), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("interactions", "untimed")
