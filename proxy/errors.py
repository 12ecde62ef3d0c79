"""The few errors rrproxy raises on purpose, each knowing the HTTP answer it becomes.

A middleware in `proxy/serve/app.py` renders them as the JSON error shape the common APIs use
(`{"error": {"type": ..., "message": ...}}`), so an SDK shows the message as it is.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RrproxyError(Exception):
    """Base class: an error with an HTTP status and an API-style error type."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "rrproxy_error"
    headers: ClassVar[dict[str, str]] = {}

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.error_type, "message": str(self)}}


class ConfigError(RrproxyError, ValueError):
    """A configuration value is missing or wrong; the message names the key."""


class BadRequest(RrproxyError, ValueError):
    """The client's request cannot be handled as sent (a bad control header, a body too large)."""

    status = 400
    error_type = "rrproxy_bad_request"


class UpstreamError(RrproxyError, ConnectionError):
    """The upstream refused, broke or answered something rrproxy cannot relay."""

    status = 502
    error_type = "rrproxy_upstream_error"


class UpstreamTimeout(UpstreamError, TimeoutError):
    """The upstream did not answer in time."""

    status = 504
    error_type = "rrproxy_upstream_timeout"


class ReplayMiss(RrproxyError, LookupError):
    """Replay found no recording for a request."""

    status = 404
    error_type = "rrproxy_replay_miss"
    headers: ClassVar[dict[str, str]] = {"Rrproxy-Miss": "1"}


class StaleRecording(ReplayMiss):
    """Strict replay refused a recording older than `max_age`."""

    error_type = "rrproxy_recording_stale"


class CassetteNotFound(RrproxyError, LookupError):
    """No cassette of that name in the store."""

    status = 404
    error_type = "rrproxy_cassette_not_found"


class CassetteExists(RrproxyError, FileExistsError):
    """An import would overwrite a different cassette of that name (use --replace)."""

    status = 409
    error_type = "rrproxy_cassette_exists"


class StoreError(RrproxyError, RuntimeError):
    """The store cannot be opened, migrated or written."""

    status = 503
    error_type = "rrproxy_store_error"


class Refused(RrproxyError, PermissionError):
    """rrproxy will not forward this request: a host outside `allow_hosts`, a request aimed
    at rrproxy itself (a loop), or forwarding that the configuration does not permit."""

    status = 403
    error_type = "rrproxy_refused"


class CassetteFileError(RrproxyError, ValueError):
    """A cassette file that cannot be read: says which line and why."""

    status = 400
    error_type = "rrproxy_bad_cassette"

    def __init__(self, line: int | None, reason: str, source: str = "cassette file"):
        super().__init__(f"{source}, line {line}: {reason}" if line else f"{source}: {reason}")
        self.line = line
        self.reason = reason
        self.source = source


class SecretsFound(RrproxyError, ValueError):
    """Export refused: the cassette holds key-like strings (each named by line and place)."""

    status = 422
    error_type = "rrproxy_secrets_found"

    def __init__(self, cassette: str, findings: list[tuple[int, Any]]):
        shown = [f"  line {line}: {finding}" for line, finding in findings[:20]]
        if len(findings) > 20:
            shown.append(f"  ... and {len(findings) - 20} more")
        super().__init__(
            f"refusing to export cassette {cassette!r}: it holds {len(findings)} key-like "
            "string(s):\n" + "\n".join(shown) + "\nRemove them (redact them when recording: "
            "see [redact] in config.example.toml, then record again), or pass --allow-secrets "
            "if they are not secrets."
        )
        self.findings = findings


class RerecordError(RrproxyError, RuntimeError):
    """`rrproxy rerecord` stopped before it wrote anything; the message says why."""


class FileChanged(RrproxyError, FileExistsError):
    """A cassette file was changed by someone else: it is not overwritten."""


class CertificateError(ValueError):
    """The CA directory holds files rrproxy cannot use (corrupt, mismatched, expired)."""


class NotFound(RrproxyError, LookupError):
    """No such admin endpoint under `/_rrproxy/` (nothing there is ever forwarded)."""

    status = 404
    error_type = "rrproxy_not_found"


class MethodNotAllowed(RrproxyError, LookupError):
    """An admin endpoint asked with a method it does not answer."""

    status = 405
    error_type = "rrproxy_method_not_allowed"

    def __init__(self, message: str, allowed: tuple[str, ...]):
        super().__init__(message)
        self.headers = {"Allow": ", ".join(allowed)}  # type: ignore[misc]


class NotJson(BadRequest):
    """An admin state change sent without `Content-Type: application/json`."""

    status = 415


class RequestTimeout(RrproxyError, TimeoutError):
    """The client did not send its request body in time; the connection is closed."""

    status = 408
    error_type = "rrproxy_request_timeout"
    headers: ClassVar[dict[str, str]] = {"Connection": "close"}


class LoopDetected(RrproxyError, RecursionError):
    """A request came back to the rrproxy that forwarded it (its `Rrproxy-Hops` header)."""

    status = 508
    error_type = "rrproxy_loop_detected"
