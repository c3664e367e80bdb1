"""The configuration model and the values that flow from devices.

Modules: `fields` (`Field`, the one declaration of a field that validates, converts and
describes it; id and text patterns), `entities` (`Device`, `Term`, `Item`, `TermItem`
and the table `ENTITIES`), `formula` (the ``formula`` entity), `values` (`Sample`,
`ControlOutcome`). Everything is importable from `pydatacoll.model` itself.
The model imports no protocol stack: protocol checks go through
`pydatacoll.protocols.registry`.
"""

from pydatacoll.model.entities import (
    ENTITIES,
    Device,
    Entity,
    Item,
    Term,
    TermItem,
    decode_fields,
)
from pydatacoll.model.fields import (
    ATTRIBUTE_PATTERN,
    HOSTNAME_PATTERN,
    ID_PATTERN,
    MAX_ATTRIBUTE_JSON,
    MAX_ATTRIBUTES,
    NUMBER_TEXT,
    Field,
    is_valid_id,
    normalize_id,
)
from pydatacoll.model.formula import MAX_FORMULA_PARAMS, Formula, parse_point
from pydatacoll.model.values import (
    OUTCOME_STATUS,
    QUALITIES,
    ControlOutcome,
    Sample,
    iso_time,
    worst_quality,
)

__all__ = [
    "ATTRIBUTE_PATTERN",
    "ENTITIES",
    "HOSTNAME_PATTERN",
    "ID_PATTERN",
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTE_JSON",
    "MAX_FORMULA_PARAMS",
    "NUMBER_TEXT",
    "OUTCOME_STATUS",
    "QUALITIES",
    "ControlOutcome",
    "Device",
    "Entity",
    "Field",
    "Formula",
    "Item",
    "Sample",
    "Term",
    "TermItem",
    "decode_fields",
    "is_valid_id",
    "iso_time",
    "normalize_id",
    "parse_point",
    "worst_quality",
]
