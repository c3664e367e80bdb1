"""How an entity declares its fields once: `Field` validates, converts and describes one.

Ids, attribute names, host names and numbers in text are checked here; the same
declaration validates request bodies, converts them to typed values, and describes them
in the OpenAPI document.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Any

import attrs

from pydatacoll.errors import ValidationError

#: What an id may be: it goes into Redis key names and URLs, so no ``:``, ``*``, ``/`` ...

ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: Names of free attributes.
ATTRIBUTE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
#: A host name (at most 253 characters): labels of letters, digits, ``_`` and inner ``-``.
HOSTNAME_PATTERN = (
    r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)
_HOSTNAME_RE = re.compile(HOSTNAME_PATTERN)
_INTEGER_TEXT = re.compile(r"^\s*[+-]?[0-9]{1,20}\s*$")
#: A number as text, as the predecessor's clients send them (``"230.5"``): decimal, no
#: exponent, at most 18 integer digits (so within 2**63). The OpenAPI document says so.
NUMBER_TEXT = r"^\s*[+-]?([0-9]{1,18}(\.[0-9]*)?|\.[0-9]+)\s*$"
_NUMBER_TEXT = re.compile(NUMBER_TEXT)
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_JSON = 64 * 1024


def is_valid_id(value: str) -> bool:
    """Whether ``value`` is a well-formed id (a string of ``[A-Za-z0-9_.-]``, not only dots)."""
    return bool(ID_PATTERN.match(value)) and value.strip(".") != ""


def normalize_id(value: Any, field: str) -> str:
    """An id from JSON: a string, or an integer (``7`` or ``7.0``) turned into its string."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValidationError(f"{field} must be a string or an integer", field=field)
    text = str(value)
    if not is_valid_id(text):
        raise ValidationError(
            f"{field} must be 1 to 64 characters of A-Z a-z 0-9 _ . - (not only dots)",
            field=field,
        )
    return text


@attrs.frozen
class Field:
    """A declared field: its JSON kind, whether it is required, its range."""

    name: str
    kind: str  # id | string | integer | number | host | scalar
    description: str
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    max_length: int = 256
    example: Any = None

    def convert(self, value: Any) -> Any:
        """The typed value of ``value``, or `ValidationError` naming the field."""
        convert = getattr(self, f"_convert_{self.kind}")
        return convert(value)

    def _convert_id(self, value: Any) -> str:
        return normalize_id(value, self.name)

    def _convert_string(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ValidationError(f"{self.name} must be a string", field=self.name)
        if len(value) > self.max_length:
            raise ValidationError(
                f"{self.name} must be at most {self.max_length} characters", field=self.name
            )
        return value

    def _convert_integer(self, value: Any) -> int:
        if isinstance(value, str) and _INTEGER_TEXT.match(value):
            value = int(value)
        elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(f"{self.name} must be an integer", field=self.name)
        self._check_range(value)
        return value

    def _convert_number(self, value: Any) -> int | float:
        if isinstance(value, str):
            # Text only for unbounded numbers (scaling, limits), the predecessor's way.
            if self.minimum is not None or self.maximum is not None:
                raise ValidationError(f"{self.name} must be a number", field=self.name)
            if not _NUMBER_TEXT.match(value):
                raise ValidationError(f"{self.name} must be a number", field=self.name)
            text = value.strip()
            value = int(text) if _INTEGER_TEXT.match(text) else float(text)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValidationError(f"{self.name} must be a number", field=self.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValidationError(f"{self.name} must be a finite number", field=self.name)
        if abs(value) > 2**63:
            raise ValidationError(f"{self.name} is out of range", field=self.name)
        self._check_range(value)
        return value

    def _convert_host(self, value: Any) -> str:
        if isinstance(value, str):
            try:
                return str(ipaddress.ip_address(value))
            except ValueError:
                if len(value) <= 253 and _HOSTNAME_RE.match(value):
                    return value
        raise ValidationError(
            f"{self.name} must be an IPv4/IPv6 address or a host name", field=self.name
        )

    def _convert_scalar(self, value: Any) -> int | str:
        if isinstance(value, str) and _INTEGER_TEXT.match(value):
            value = int(value)
        elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value <= 65535:
                raise ValidationError(f"{self.name} must be from 0 to 65535", field=self.name)
            return value
        if isinstance(value, str) and 0 < len(value) <= 32:
            return value
        raise ValidationError(
            f"{self.name} must be an integer or a name of at most 32 characters", field=self.name
        )

    def _check_range(self, value: float) -> None:
        if self.minimum is not None and value < self.minimum:
            raise ValidationError(f"{self.name} must be at least {self.minimum:g}", field=self.name)
        if self.maximum is not None and value > self.maximum:
            raise ValidationError(f"{self.name} must be at most {self.maximum:g}", field=self.name)

    def json_schema(self) -> dict[str, Any]:
        """This field as a JSON Schema (what the API accepts, numeric strings included)."""
        schema: dict[str, Any]
        if self.kind == "id":
            schema = {
                "oneOf": [
                    {"type": "string", "pattern": ID_PATTERN.pattern, "not": {"pattern": r"^\.+$"}},
                    {"type": "integer"},
                ]
            }
        elif self.kind in ("string", "host"):
            schema = {"type": "string", "maxLength": self.max_length}
        elif self.kind in ("integer", "number"):
            numeric: dict[str, Any] = {"type": self.kind}
            if self.minimum is not None:
                numeric["minimum"] = self.minimum
            if self.maximum is not None:
                numeric["maximum"] = self.maximum
            schema = {
                "oneOf": [numeric, {"type": "string", "pattern": r"^\s*[+-]?[0-9.eE+-]+\s*$"}]
            }
        else:
            schema = {
                "oneOf": [
                    {"type": "integer", "minimum": 0, "maximum": 65535},
                    {"type": "string", "minLength": 1, "maxLength": 32},
                ]
            }
        schema["description"] = self.description
        if self.example is not None:
            schema["examples"] = [self.example]
        return schema
