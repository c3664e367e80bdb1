"""The one exception hierarchy of PyDataColl."""

from __future__ import annotations


class PyDataCollError(Exception):
    """Base class of every error raised by PyDataColl on purpose."""


class ConfigError(PyDataCollError):
    """A configuration value is wrong; ``key`` names it (``section.option``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class ApiError(PyDataCollError):
    """An error reported to a REST client as ``{"error", "message", "field"}``.

    ``index`` is set for batch requests: the position of the offending element.
    """

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None, index: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.index = index

    def to_json(self) -> dict[str, object]:
        """The JSON body of the error response."""
        body: dict[str, object] = {"error": self.code, "message": self.message, "field": self.field}
        if self.index is not None:
            body["index"] = self.index
        return body


class ValidationError(ApiError):
    """A request body or parameter does not match its schema."""

    status = 400
    code = "invalid"


class Unauthorized(ApiError):
    """The request lacks the API token it needs."""

    status = 401
    code = "unauthorized"


class NotFound(ApiError):
    """An entity named by the request does not exist."""

    status = 404
    code = "not_found"


class MethodNotAllowed(ApiError):
    """The route exists but not with this HTTP method."""

    status = 405
    code = "method_not_allowed"


class Conflict(ApiError):
    """The request conflicts with what is stored (duplicate, rename)."""

    status = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    """The request body is over the configured limit."""

    status = 413
    code = "too_large"


class UnsupportedMediaType(ApiError):
    """The request body is not JSON."""

    status = 415
    code = "unsupported_media_type"


class Unavailable(ApiError):
    """A component the request needs (Redis, a collector) cannot be reached."""

    status = 503
    code = "unavailable"


class GatewayTimeout(ApiError):
    """A device or collector did not answer in time."""

    status = 504
    code = "timeout"


class StoreUnavailable(Unavailable):
    """Redis is not reachable (or did not answer in time)."""

    code = "redis_unavailable"


class EmbeddedRedisError(PyDataCollError):
    """The embedded redis-server cannot be found or started."""


class RemoteProtocolError(PyDataCollError):
    """A peer device sent bytes that do not decode; ``offset`` is where decoding stopped.

    Each protocol codec raises its own subclass; the link that carried the bytes is closed
    (and re-opened with backoff), other devices are not touched.
    """

    def __init__(self, message: str, *, offset: int | None = None, data: bytes = b"") -> None:
        super().__init__(message if offset is None else f"{message} (at offset {offset})")
        self.offset = offset
        self.data = bytes(data[:300])
