"""Alembic migrations for rrproxy's store (installed as the `proxy.migrations` package)."""
