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


#: The JSON Schema of every REST error body (`error_body`); the OpenAPI document uses it.
ERROR_SCHEMA: dict[str, object] = {
    "type": "object",
    "required": ["error", "message", "field"],
    "properties": {
        "error": {"type": "string", "description": "a short code: invalid, not_found, ..."},
        "message": {"type": "string", "description": "what is wrong, for a person"},
        "field": {
            "type": ["string", "null"],
            "description": "the body field, parameter or setting at fault (null: the request)",
        },
        "index": {"type": "integer", "description": "the element of a batch at fault"},
        "sheet": {"type": "string", "description": "configuration import: sheet, file or key"},
        "row": {"type": ["integer", "null"], "description": "configuration import: row"},
    },
}


def error_body(
    code: str, message: str, field: str | None = None, index: int | None = None
) -> dict[str, object]:
    """The one JSON error shape of the REST API: ``{"error", "message", "field"}`` (+ index)."""
    body: dict[str, object] = {"error": code, "message": message, "field": field}
    if index is not None:
        body["index"] = index
    return body


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
        return error_body(self.code, self.message, self.field, self.index)


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

    def __init__(
        self, message: str, *, offset: int | None = None, data: bytes | bytearray = b""
    ) -> None:
        super().__init__(message if offset is None else f"{message} (at offset {offset})")
        self.offset = offset
        self.data = bytes(data[:300])


class Iec104Error(RemoteProtocolError):
    """IEC 60870-5-104 bytes that do not decode."""


class ApciError(Iec104Error):
    """A broken APCI (start octet, length, control field): the link must be closed."""


class AsduError(Iec104Error):
    """A broken ASDU inside a well-framed I-frame: it is skipped, the link stays up."""


class UnknownTypeError(AsduError):
    """An ASDU whose type identification this codec does not know; ``type_id`` names it."""

    def __init__(self, type_id: int, *, data: bytes = b"") -> None:
        super().__init__(f"unknown type identification {type_id}", offset=0, data=data)
        self.type_id = type_id


class ModbusError(PyDataCollError):
    """Base class of the errors a Modbus request can fail with (other than bad bytes)."""


class ModbusFrameError(RemoteProtocolError):
    """A Modbus peer sent bytes that are not a valid MBAP frame or response PDU.

    The link that carried them is closed; ``data`` holds the offending bytes (logged as hex).
    """


class ModbusExceptionResponse(ModbusError):
    """The device answered with a Modbus exception response (function code + 0x80)."""

    #: Exception code -> name, from the Modbus Application Protocol v1.1b3, clause 7.
    NAMES = {
        1: "illegal function",
        2: "illegal data address",
        3: "illegal data value",
        4: "server device failure",
        5: "acknowledge",
        6: "server device busy",
        8: "memory parity error",
        10: "gateway path unavailable",
        11: "gateway target device failed to respond",
    }

    def __init__(self, function_code: int, exception_code: int, unit_id: int) -> None:
        self.function_code = function_code
        self.exception_code = exception_code
        self.unit_id = unit_id
        self.name = self.NAMES.get(exception_code, "unknown exception")
        super().__init__(
            f"unit {unit_id} function {function_code}: exception {exception_code} ({self.name})"
        )


class ModbusTimeout(ModbusError):
    """A Modbus request got no response within its timeout."""


class ModbusNotConnected(ModbusError):
    """A Modbus request could not be sent, or its answer not received: the link is down."""


class ModbusQueueFull(ModbusError):
    """A Modbus request was refused because the connection's request queue is full."""


class ModbusVerifyError(ModbusError):
    """A written value did not read back as written."""


class DeviceError(PyDataCollError):
    """A device could not do what was asked; ``outcome`` names why (see `ControlOutcome`)."""

    outcome = "failed"

    def __init__(self, message: str, cause: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause


class DeviceOffline(DeviceError):
    """The device's link is not up."""

    outcome = "offline"


class DeviceTimeout(DeviceError):
    """The device did not answer in time."""

    outcome = "timeout"


class DeviceRefused(DeviceError):
    """The device answered negatively (``cause`` is its reason)."""

    outcome = "negative"


class DeviceBusy(DeviceError):
    """A request for the same point is already in flight."""

    outcome = "busy"


class RequestRefused(DeviceError):
    """The request cannot be sent (a value the point's type cannot carry)."""

    outcome = "refused"
