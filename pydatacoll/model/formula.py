"""The ``formula`` entity: a point computed from other points by an expression."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from pydatacoll.errors import ValidationError
from pydatacoll.expression import ExpressionError, compile_expression

#: What an id may be: it goes into Redis key names and URLs, so no ``:``, ``*``, ``/`` ...
from pydatacoll.model.entities import ENTITIES, Entity, _extra
from pydatacoll.model.fields import Field, is_valid_id

MAX_FORMULA_PARAMS = 32
_PARAM_NAME = re.compile(r"^p[0-9]{1,3}$")


def parse_point(value: Any, field: str) -> tuple[str, str, str]:
    """A point named ``"device_id:term_id:item_id"``; `ValidationError` naming ``field``."""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a point 'device_id:term_id:item_id'", field=field)
    parts = value.split(":")
    if len(parts) != 3 or not all(is_valid_id(part) for part in parts):
        raise ValidationError(
            f"{field} must be a point 'device_id:term_id:item_id' of valid ids", field=field
        )
    return (parts[0], parts[1], parts[2])


@attrs.frozen
class Formula(Entity):
    """A calculated point: an expression over input points (``p1``..``pN``) and a result point.

    Fields named ``p`` + digits are the parameters; other free attributes are kept.
    The expression is checked by `pydatacoll.expression.compile_expression`.
    """

    KIND: ClassVar[str] = "formula"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("id", "id", "formula id", required=True, example="1"),
        Field(
            "formula",
            "string",
            "expression over p1..pN (latest values) and avg/min/max/delta/sum/count(pN, '15m')",
            required=True,
            max_length=1024,
            example="max(p1, p2) * 2",
        ),
        Field("device_id", "id", "device of the result point", required=True, example="3"),
        Field("term_id", "id", "term of the result point", required=True, example="40"),
        Field("item_id", "id", "item of the result point", required=True, example="1000"),
        Field("name", "string", "display name", example="total load"),
    )

    id: str
    formula: str
    device_id: str
    term_id: str
    item_id: str
    name: str | None = None
    extra: Mapping[str, Any] = _extra()

    @property
    def result(self) -> tuple[str, str, str]:
        """The result point ``(device_id, term_id, item_id)``."""
        return (self.device_id, self.term_id, self.item_id)

    @property
    def params(self) -> dict[str, tuple[str, str, str]]:
        """Parameter name -> input point."""
        return {
            name: parse_point(value, name)
            for name, value in sorted(self.extra.items())
            if _PARAM_NAME.match(name)
        }

    def check(self) -> None:
        """Parameters must name points; the expression must pass the sandbox's checks."""
        for name in self.extra:
            if name.startswith("p") and name[1:].isdigit() and not _PARAM_NAME.match(name):
                raise ValidationError("parameters are named p0 to p999", field=name)
        params = self.params
        if len(params) > MAX_FORMULA_PARAMS:
            raise ValidationError(f"at most {MAX_FORMULA_PARAMS} parameters are allowed")
        try:
            compile_expression(self.formula, params)
        except ExpressionError as e:
            raise ValidationError(e.message, field="formula") from None


ENTITIES["formula"] = Formula
