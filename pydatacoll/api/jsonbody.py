"""JSON request bodies and responses."""

from __future__ import annotations

import json
from typing import Any

from pydatacoll import errors


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_json(request: Any) -> Any:
    """The parsed JSON body: 413 over the limit, 415 if not JSON, 400 if malformed."""
    if getattr(request, "body_too_large", False):
        raise errors.PayloadTooLarge(f"the request body is over {request.max_body} bytes")
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type != b"application/json" and not content_type.endswith(b"+json"):
        raise errors.UnsupportedMediaType("send the body as Content-Type: application/json")
    request.content.seek(0)
    raw = request.content.read()
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise errors.ValidationError(f"the body is not valid UTF-8 JSON ({e})"[:300]) from None


def dumps(body: Any) -> bytes:
    """A response body."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
