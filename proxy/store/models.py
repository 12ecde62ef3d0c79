"""The schema, as typed SQLAlchemy 2 models. Changed only together with a migration."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Cassette(Base):
    """Ids, like interactions', are never given again (SQLite `AUTOINCREMENT`; PostgreSQL's
    serial sequence): a writer still holding a deleted one fails, it never writes elsewhere."""

    __tablename__ = "cassettes"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Interaction(Base):
    """One request and its response head; the body lives in `events`.

    `id` order within a cassette is recording order (the order requests started). An id is
    never given again, even after a delete (SQLite `AUTOINCREMENT`): the late events of a
    deleted interaction can never land in another one.
    """

    __tablename__ = "interactions"
    __table_args__ = (
        Index("ix_interactions_cassette_id_id", "cassette_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cassette_id: Mapped[int] = mapped_column(ForeignKey("cassettes.id", ondelete="CASCADE"))
    method: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(Text)
    request_headers: Mapped[list[list[str]]] = mapped_column(JSON)
    request_body: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[int] = mapped_column(Integer)
    response_headers: Mapped[list[list[str]]] = mapped_column(JSON)
    outcome: Mapped[str] = mapped_column(String(20))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ttfb_ms: Mapped[float] = mapped_column(Float)
    duration_ms: Mapped[float | None] = mapped_column(Float)
    event_count: Mapped[int] = mapped_column(Integer, default=0)
    body_size: Mapped[int] = mapped_column(Integer, default=0)
    body_sha256: Mapped[str | None] = mapped_column(String(64))  # of the body as it arrived


class Event(Base):
    """One unit of a response body, in order; concatenated they are the body."""

    __tablename__ = "events"

    interaction_id: Mapped[int] = mapped_column(
        ForeignKey("interactions.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    t_ms: Mapped[float] = mapped_column(Float)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Usage(Base):
    """The ledger: the tokens an interaction's answer reports (model, input with the cached
    ones, output, cached), read off its stream. No usage in the answer, no row."""

    __tablename__ = "usage"

    interaction_id: Mapped[int] = mapped_column(
        ForeignKey("interactions.id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str | None] = mapped_column(String(200))
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer)


class CassetteFile(Base):
    """A cassette directory's file as last loaded or written: unchanged files are not read
    again at start. Keyed by cassette name (the file is `NAME.cassette.jsonl`)."""

    __tablename__ = "cassette_files"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    loaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
