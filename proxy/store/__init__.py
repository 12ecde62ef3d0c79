"""Persistence: SQLAlchemy models, the engine, Alembic migrations and read queries."""
