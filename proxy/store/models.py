"""The schema, as typed SQLAlchemy 2 models. Changed only together with a migration."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    false,
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

    `ordinal` is its place in the cassette (1, 2, ...) in the order recordings began, unique
    per cassette: the writer that inserts it places it (`proxy.store.ordinals`), holding
    the cassette's row, so proxies sharing the store never give one place twice. (Null only
    inside the transaction that inserts it.) `instance_id` is the proxy recording it. An id is
    never given again, even after a delete (SQLite `AUTOINCREMENT`): the late events of a
    deleted interaction can never land in another one.
    """

    __tablename__ = "interactions"
    __table_args__ = (
        Index("ix_interactions_cassette_id_id", "cassette_id", "id"),
        Index("uq_interactions_cassette_id_ordinal", "cassette_id", "ordinal", unique=True),
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
    instance_id: Mapped[int | None] = mapped_column(Integer)
    ordinal: Mapped[int | None] = mapped_column(Integer)
    untimed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """Imported without event timing (vcrpy, a browser's HAR): the body is one event, and
    replay sends it at `untimed_pace` (instant unless told otherwise), whatever the pace."""


class Event(Base):
    """One unit of a response body, in order; concatenated they are the body. A row is an
    event, or a part of one larger than a part (`continues`: it goes on with the event of
    the row before it); `pieces`: when each piece of it arrived (`proxy.core.pieces`)."""

    __tablename__ = "events"

    interaction_id: Mapped[int] = mapped_column(
        ForeignKey("interactions.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    t_ms: Mapped[float] = mapped_column(Float)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    pieces: Mapped[str | None] = mapped_column(Text)
    continues: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


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


class Message(Base):
    """One message of a recorded WebSocket session (an interaction whose status is 101), in
    order: who sent it, its kind (text, binary, close), its payload (a close's reason), and
    a close's code (1006: the connection dropped without a close)."""

    __tablename__ = "messages"

    interaction_id: Mapped[int] = mapped_column(
        ForeignKey("interactions.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    t_ms: Mapped[float] = mapped_column(Float)
    from_client: Mapped[bool] = mapped_column(Boolean)
    kind: Mapped[str] = mapped_column(String(8))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    code: Mapped[int | None] = mapped_column(Integer)


class Instance(Base):
    """A running proxy (or worker process) on this store, with its heartbeat: start-up
    repair leaves the open interactions of an instance whose heartbeat is fresh alone."""

    __tablename__ = "instances"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CassetteFile(Base):
    """A cassette directory's file as last loaded or written: unchanged files are not read
    again at start. Keyed by cassette name (the file is `NAME.cassette.jsonl`)."""

    __tablename__ = "cassette_files"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    loaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
