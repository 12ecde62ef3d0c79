"""Events keep the pieces they arrived in, and a large event is stored in parts.

`events.pieces`: where each piece of the event starts in its bytes and when it arrived, as
compact JSON text (`[[0,1.5],[17,40.25]]`), NULL for an event (or part) that arrived in
one piece. `events.continues`: the row continues the event of the row before it (an event
larger than a part is written as it fills, one row a part). Rows written before keep
NULL and false: each is a whole event that arrived in one piece, as they were replayed.

Revision ID: 0005_event_pieces
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_event_pieces"
down_revision: str | None = "0004_imported_timing"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (SQLite and PostgreSQL alike): no copy of the table.
    op.add_column("events", sa.Column("pieces", sa.Text(), nullable=True))
    op.add_column(
        "events",
        sa.Column("continues", sa.Boolean(), server_default=sa.false(), nullable=False),
    )


def downgrade() -> None:
    # in place (SQLite >= 3.35 drops a column): a table copy would cascade deletes
    with op.batch_alter_table("events", recreate="never") as batch:
        batch.drop_column("continues")
        batch.drop_column("pieces")
