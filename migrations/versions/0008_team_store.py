"""Team store: several proxies on one database.

- `instances`: each running proxy's row and heartbeat. Start-up repair marks incomplete only
  the open interactions of instances whose heartbeat has lapsed (`proxy.store.instances`).
- `interactions.instance_id`: the proxy that is recording it (no foreign key: an instance's
  row goes when it stops, its interactions stay).
- `interactions.ordinal`: the interaction's place in its cassette (1, 2, ...), in the order
  recordings began; unique per cassette, so two proxies can never give the same place twice.
  Existing interactions are numbered in id order (their recording order until now).

Unique *index* rather than constraint: SQLite adds it in place; a constraint would need a
copy of the table, whose drop would cascade to the events (see 0003).

Revision ID: 0008_team_store
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_team_store"
down_revision: str | None = "0007_websocket_messages"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ORDINALS = "uq_interactions_cassette_id_ordinal"


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instances")),
        sqlite_autoincrement=True,
    )
    op.add_column("interactions", sa.Column("instance_id", sa.Integer(), nullable=True))
    op.add_column("interactions", sa.Column("ordinal", sa.Integer(), nullable=True))
    _number_existing()
    op.create_index(_ORDINALS, "interactions", ["cassette_id", "ordinal"], unique=True)


def _number_existing() -> None:
    """Each cassette's interactions numbered 1, 2, ... in id order: one pass in Python (a
    correlated count per row would be quadratic in a cassette's size; `UPDATE ... FROM` with
    a window function needs SQLite 3.33)."""
    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT id, cassette_id FROM interactions ORDER BY cassette_id, id")
    ).all()
    places: list[dict[str, int]] = []
    cassette, n = None, 0
    for id_, cassette_id in rows:
        n = n + 1 if cassette_id == cassette else 1
        cassette = cassette_id
        places.append({"place": n, "id": id_})
    if places:
        bind.execute(sa.text("UPDATE interactions SET ordinal = :place WHERE id = :id"), places)


def downgrade() -> None:
    op.drop_index(_ORDINALS, table_name="interactions")
    with op.batch_alter_table("interactions", recreate="never") as batch:
        batch.drop_column("ordinal")
        batch.drop_column("instance_id")
    op.drop_table("instances")
