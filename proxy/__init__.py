"""rrproxy: a record-and-replay proxy for streaming HTTP APIs."""

__version__ = "0.1.0"
