"""The Modbus point codec: register tables, data types, byte orders, scaling.

Pure code (no Twisted, no pymodbus): a `PointFormat` turns registers (or bits) into a raw
value and back, and `scale`/`unscale` apply ``value = raw * coefficient + base_val``. The
same format is used for reads and writes, so a byte order that reads right writes right.

Byte orders name the bytes of the value, most significant first, as they appear on the
wire: ``ABCD`` is big-endian (Modbus' own order), ``CDAB`` swaps the 16-bit words,
``BADC`` swaps the bytes in each word and ``DCBA`` is little-endian. For 64-bit values
the same four names mean ``ABCDEFGH``, ``GHEFCDAB``, ``BADCFEHG`` and ``HGFEDCBA``
(those names are accepted too); for 16-bit values and strings only the byte swap counts.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Sequence
from typing import Any

import attrs

from pydatacoll.errors import ValidationError
from pydatacoll.scaling import apply_scaling


class Table(enum.Enum):
    """A Modbus data table, by the name used in ``code_type``."""

    COIL = "coil"
    DISCRETE_INPUT = "discrete_input"
    INPUT = "input"
    HOLDING = "holding"

    @property
    def is_bits(self) -> bool:
        """Whether the table holds single bits (coils, discrete inputs)."""
        return self in (Table.COIL, Table.DISCRETE_INPUT)

    @property
    def writable(self) -> bool:
        """Whether a master can write the table (coils, holding registers)."""
        return self in (Table.COIL, Table.HOLDING)


#: ``code_type`` spellings -> table. The numbers are the Modicon reference prefixes
#: (0xxxx coils, 1xxxx discrete inputs, 3xxxx input registers, 4xxxx holding registers).
TABLE_NAMES: dict[int | str, Table] = {
    0: Table.COIL,
    1: Table.DISCRETE_INPUT,
    3: Table.INPUT,
    4: Table.HOLDING,
    "coil": Table.COIL,
    "coils": Table.COIL,
    "discrete_input": Table.DISCRETE_INPUT,
    "discrete_inputs": Table.DISCRETE_INPUT,
    "input": Table.INPUT,
    "input_register": Table.INPUT,
    "input_registers": Table.INPUT,
    "holding": Table.HOLDING,
    "holding_register": Table.HOLDING,
    "holding_registers": Table.HOLDING,
}


def parse_table(code_type: int | str | None) -> Table | None:
    """The table named by ``code_type`` (holding when absent), or None if it names none."""
    if code_type is None:
        return Table.HOLDING
    if isinstance(code_type, str):
        text = code_type.strip().lower()
        code_type = int(text) if text.isdigit() else text
    return TABLE_NAMES.get(code_type)


#: data type -> (struct code, registers); strings take ``count`` registers.
DATA_TYPES: dict[str, tuple[str, int]] = {
    "bool": ("", 0),
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
    "int64": ("q", 4),
    "uint64": ("Q", 4),
    "float32": ("f", 2),
    "float64": ("d", 4),
    "string": ("", 0),
}
INTEGER_TYPES = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})

#: byte order name -> (swap the bytes of each word, reverse the order of the words).
BYTE_ORDERS: dict[str, tuple[bool, bool]] = {
    "ABCD": (False, False),
    "BADC": (True, False),
    "CDAB": (False, True),
    "DCBA": (True, True),
}
BYTE_ORDERS_64: dict[str, tuple[bool, bool]] = {
    "ABCDEFGH": (False, False),
    "BADCFEHG": (True, False),
    "GHEFCDAB": (False, True),
    "HGFEDCBA": (True, True),
}
BYTE_ORDERS_16: dict[str, tuple[bool, bool]] = {"AB": (False, False), "BA": (True, False)}

#: Registers in one read (Modbus Application Protocol v1.1b3, 6.3) bound a string.
MAX_STRING_REGISTERS = 125


_WORD, _BIT, _REGISTER_BIT, _STRUCT = range(4)


@attrs.frozen
class PointFormat:
    """How one point sits in its table: type, order, bit, width; encodes and decodes it."""

    table: Table
    data_type: str
    swap_bytes: bool = False
    reverse_words: bool = False
    bit: int | None = None
    #: Registers the value spans (bits for a coil or discrete input: always 1).
    width: int = 1
    _unpack: Any = attrs.field(init=False, repr=False, eq=False)
    _words: Any = attrs.field(init=False, repr=False, eq=False)
    #: Decoding shortcut (the hot path: one call per point per scan): see `decode`.
    _mode: int = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        code, _ = DATA_TYPES[self.data_type]
        words = f"{'<' if self.swap_bytes else '>'}{self.width}H"
        object.__setattr__(self, "_words", struct.Struct(words))
        object.__setattr__(self, "_unpack", struct.Struct(">" + code) if code else None)
        if self.table.is_bits:
            mode = _BIT
        elif self.bit is not None:
            mode = _REGISTER_BIT
        elif self.data_type == "uint16" and not self.swap_bytes:
            mode = _WORD
        else:
            mode = _STRUCT
        object.__setattr__(self, "_mode", mode)

    @property
    def plain_word(self) -> bool:
        """Whether the value is the register itself (an uint16 in the usual byte order)."""
        return self._mode == _WORD

    def decode(self, data: Sequence[Any], offset: int) -> bool | int | float | str:
        """The raw value at ``offset`` of a block of registers (or of bits)."""
        mode = self._mode
        if mode == _WORD:
            return data[offset]  # type: ignore[no-any-return]
        if mode == _BIT:
            return bool(data[offset])
        if mode == _REGISTER_BIT:
            return bool((data[offset] >> self.bit) & 1)  # type: ignore[operator]
        words = data[offset : offset + self.width]
        if self.reverse_words:
            words = words[::-1]
        raw = self._words.pack(*words)
        if self._unpack is None:
            return raw.rstrip(b"\x00").decode("latin-1")
        return self._unpack.unpack(raw)[0]  # type: ignore[no-any-return]

    def encode(self, raw: Any) -> list[int]:
        """The registers (a bit: ``[0|1]``) holding the raw value; `ValidationError` if it can't."""
        if self.table.is_bits or self.bit is not None:
            return [1 if to_bool(raw) else 0]
        if self._unpack is None:
            if not isinstance(raw, str):
                raise ValidationError("a string point takes a string value", field="value")
            try:
                data = raw.encode("latin-1")
            except UnicodeEncodeError:
                raise ValidationError("a string point takes Latin-1 text", field="value") from None
            if len(data) > 2 * self.width:
                raise ValidationError(
                    f"the string is longer than {2 * self.width} characters", field="value"
                )
            data = data.ljust(2 * self.width, b"\x00")
        else:
            if self.data_type in INTEGER_TYPES:
                raw = to_integer(raw)
            elif isinstance(raw, bool) or not isinstance(raw, (int, float)):
                raise ValidationError(f"a {self.data_type} point takes a number", field="value")
            try:
                data = self._unpack.pack(raw)
            except (struct.error, OverflowError):
                raise ValidationError(
                    f"{raw!r} is out of range for {self.data_type}", field="value"
                ) from None
        words = list(self._words.unpack(data))
        if self.reverse_words:
            words.reverse()
        return words


def to_bool(value: Any) -> bool:
    """A bit value from JSON: true/false or 0/1."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise ValidationError("a bool point takes true, false, 0 or 1", field="value")


def to_integer(value: Any) -> int:
    """An integer from a JSON number (a float must be integral after scaling)."""
    if isinstance(value, bool):
        raise ValidationError("an integer point takes a number", field="value")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError("the value must be finite", field="value")
        return round(value)
    if not isinstance(value, int):
        raise ValidationError("an integer point takes a number", field="value")
    return value


def point_format(
    code_type: int | str | None = None,
    data_type: str | None = None,
    byte_order: str | None = None,
    bit: int | None = None,
    count: int | None = None,
    address: int | None = None,
    default_byte_order: str = "ABCD",
) -> PointFormat:
    """Check a point's Modbus fields and build its format; `ValidationError` names the field."""
    table = parse_table(code_type)
    if table is None:
        raise ValidationError(
            "code_type of a Modbus point must be coil, discrete_input, input or holding "
            "(or 0, 1, 3, 4)",
            field="code_type",
        )
    if data_type is None:
        data_type = "bool" if table.is_bits else "uint16"
    data_type = data_type.strip().lower()
    if data_type not in DATA_TYPES:
        raise ValidationError(
            f"data_type must be one of {', '.join(DATA_TYPES)}", field="data_type"
        )
    if table.is_bits and data_type != "bool":
        raise ValidationError(f"a {table.value} point is a bool", field="data_type")
    if bit is not None and (table.is_bits or data_type != "bool"):
        raise ValidationError("bit is only for a bool point in a register", field="bit")
    if bit is not None and not 0 <= bit <= 15:
        raise ValidationError("bit must be from 0 to 15", field="bit")
    if data_type == "bool" and not table.is_bits and bit is None:
        raise ValidationError("a bool point in a register needs bit (0 to 15)", field="bit")
    if count is not None and data_type != "string":
        raise ValidationError("count is only for a string point", field="count")
    if data_type == "string" and (count is None or not 1 <= count <= MAX_STRING_REGISTERS):
        raise ValidationError(
            f"a string point needs count: its registers (1 to {MAX_STRING_REGISTERS})",
            field="count",
        )
    if data_type == "bool":
        if byte_order is not None:
            raise ValidationError("byte_order does not apply to a bool point", field="byte_order")
        flags = (False, False)
        width = 1
    else:
        width = (count or 0) if data_type == "string" else DATA_TYPES[data_type][1]
        flags = _byte_order(byte_order, default_byte_order, data_type, width)
        if data_type == "string" or width == 1:
            flags = (flags[0], False)
    if address is not None and address + width - 1 > 65535:
        raise ValidationError(
            "a Modbus point's registers must lie within addresses 0 to 65535",
            field="protocol_code",
        )
    return PointFormat(table, data_type, flags[0], flags[1], bit, width)


def check_item_fields(term_item: Any) -> None:
    """Check a term-item's Modbus fields (``data_type``, ``byte_order``, ``bit``,
    ``count``) together with its ``code_type`` and address; `ValidationError` names the
    field. The device registry calls it for a term-item with any of those fields set."""
    point_format(
        term_item.code_type,
        term_item.data_type,
        term_item.byte_order,
        term_item.bit,
        term_item.count,
        address=term_item.protocol_code,
    )


def _byte_order(name: str | None, default: str, data_type: str, width: int) -> tuple[bool, bool]:
    source = ""
    if name is None:
        name, source = default, " (the device's default)"
    key = name.strip().upper()
    if key in BYTE_ORDERS:
        return BYTE_ORDERS[key]
    if key in BYTE_ORDERS_64 and width == 4 and data_type != "string":
        return BYTE_ORDERS_64[key]
    if key in BYTE_ORDERS_16 and (width == 1 or data_type == "string"):
        return BYTE_ORDERS_16[key]
    raise ValidationError(
        f"byte_order must be one of ABCD, BADC, CDAB, DCBA for {data_type}"
        + (" (or ABCDEFGH, BADCFEHG, GHEFCDAB, HGFEDCBA)" if width == 4 else "")
        + (" (or AB, BA)" if width == 1 or data_type == "string" else "")
        + source,
        field="byte_order",
    )


def scale(raw: Any, coefficient: float | None, base_val: float | None) -> Any:
    """``raw * coefficient + base_val`` (rounded to what a double holds: 2401 * 0.1 is
    240.1); without scaling, raw values keep their type."""
    return apply_scaling(raw, coefficient, base_val)


def unscale(value: Any, coefficient: float | None, base_val: float | None) -> Any:
    """The raw value a written engineering value stands for (the inverse of `scale`)."""
    if (coefficient is None and base_val is None) or isinstance(value, (bool, str)):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError("the value must be a number", field="value")
    if coefficient == 0:
        raise ValidationError("a point with coefficient 0 cannot be written", field="value")
    raw = value - (base_val or 0)
    if coefficient is not None and coefficient != 1:
        raw = raw / coefficient
    return raw
