"""Ids never given again: SQLite `AUTOINCREMENT` on cassettes and interactions.

Without it SQLite gives a new row `max(id) + 1`, so the id of a deleted interaction (or
cassette) comes back, and a writer still holding the old id writes into the new row: the
late events of a recording whose cassette was deleted ended up in another cassette.
PostgreSQL's serial columns never reuse an id: nothing to do there.

SQLite cannot add `AUTOINCREMENT` in place, and Alembic's batch mode (copy, drop, rename)
would drop a parent table with foreign keys on, which deletes its children (`ON DELETE
CASCADE`); `PRAGMA foreign_keys` cannot be turned off inside the migration's transaction.
So the three tables are moved aside together (a rename carries the foreign keys along),
created anew, filled, and the old ones dropped children first: nothing cascades.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("events", "interactions", "cassettes")  # children first
_INDEX = "ix_interactions_cassette_id_id"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(autoincrement=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(autoincrement=False)


def _rebuild(*, autoincrement: bool) -> None:
    for table in _TABLES:
        op.rename_table(table, f"_old_{table}")
    op.drop_index(_INDEX, table_name="_old_interactions")
    _create(autoincrement)
    for table in reversed(_TABLES):  # parents first
        op.execute(f"INSERT INTO {table} SELECT * FROM _old_{table}")  # same columns, in order
    for table in _TABLES:
        op.drop_table(f"_old_{table}")


def _create(autoincrement: bool) -> None:
    """The tables as 0001 made them (same columns in the same order, same constraint names),
    with or without `AUTOINCREMENT`."""
    op.create_table(
        "cassettes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cassettes")),
        sa.UniqueConstraint("name", name=op.f("uq_cassettes_name")),
        sqlite_autoincrement=autoincrement,
    )
    op.create_table(
        "interactions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cassette_id", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("request_headers", sa.JSON(), nullable=False),
        sa.Column("request_body", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("response_headers", sa.JSON(), nullable=False),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ttfb_ms", sa.Float(), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("body_size", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["cassette_id"],
            ["cassettes.id"],
            name=op.f("fk_interactions_cassette_id_cassettes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interactions")),
        sqlite_autoincrement=autoincrement,
    )
    op.create_index(_INDEX, "interactions", ["cassette_id", "id"], unique=False)
    op.create_table(
        "events",
        sa.Column("interaction_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("t_ms", sa.Float(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["interaction_id"],
            ["interactions.id"],
            name=op.f("fk_events_interaction_id_interactions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("interaction_id", "seq", name=op.f("pk_events")),
    )
