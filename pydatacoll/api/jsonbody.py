"""JSON request bodies and responses: strict JSON in, strict JSON out (no NaN/Infinity)."""

from __future__ import annotations

import json
import math
from typing import Any

from twisted.logger import Logger

from pydatacoll import errors

log = Logger()


class _NotFinite:
    """A number literal too large for a float (``1e99999``), kept until its place is known."""

    def __init__(self, text: str) -> None:
        self.text = text


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _NotFinite(text)


def _find_not_finite(value: Any, path: str) -> tuple[str, str] | None:
    """(path, literal) of the first non-finite number in ``value``, depth first."""
    if isinstance(value, _NotFinite):
        return path, value.text
    if isinstance(value, dict):
        for name, item in value.items():
            found = _find_not_finite(item, f"{path}.{name}" if path else str(name))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _find_not_finite(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def read_json(request: Any) -> Any:
    """The parsed JSON body: 413 over the limit, 415 if not JSON, 400 if malformed.

    A number out of the float range (``1e99999``) is refused with 400 naming its field:
    it would otherwise be stored as ``Infinity`` and served back as invalid JSON.
    """
    if getattr(request, "body_too_large", False):
        raise errors.PayloadTooLarge(f"the request body is over {request.max_body} bytes")
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type != b"application/json" and not content_type.endswith(b"+json"):
        raise errors.UnsupportedMediaType("send the body as Content-Type: application/json")
    request.content.seek(0)
    raw = request.content.read()
    try:
        body = json.loads(
            raw.decode("utf-8"),
            parse_constant=_reject_constant,
            parse_float=_parse_float,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise errors.ValidationError(f"the body is not valid UTF-8 JSON ({e})"[:300]) from None
    found = _find_not_finite(body, "")
    if found is not None:
        path, text = found
        field = path or None
        where = f"{path} = {text}" if path else text
        raise errors.ValidationError(
            f"numbers must be finite and in the float range ({where})"[:300], field=field
        )
    return body


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(body: Any) -> bytes:
    """A response body: strict JSON, never ``NaN``/``Infinity``.

    A non-finite float that reached an answer (a device reply, an old stored value) is
    served as null and logged, rather than as text no JSON parser accepts.
    """
    try:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        log.warn("a non-finite number in a response was served as null")
        text = json.dumps(_finite(body), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")
