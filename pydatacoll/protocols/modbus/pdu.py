"""Modbus request and response PDUs, built and decoded with pymodbus' sans-I/O PDU classes.

Pure code (no Twisted): `Request` values carry the encoded PDU and what a matching
response must look like; `decode_response` checks a response PDU against its request and
returns a `Response`. Anything that does not decode, or does not answer the request,
raises `ModbusFrameError`; an exception response is a `Response` with ``exception_code``.
"""

from __future__ import annotations

import functools
import itertools
import struct
from collections.abc import Sequence

import attrs
from pymodbus.pdu import DecodePDU, ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadDiscreteInputsRequest,
    WriteMultipleCoilsRequest,
    WriteSingleCoilRequest,
)
from pymodbus.pdu.register_message import (
    MaskWriteRegisterRequest,
    ReadHoldingRegistersRequest,
    ReadInputRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)

from pydatacoll.errors import ModbusFrameError
from pydatacoll.protocols.modbus.codec import Table

#: Limits of the Modbus Application Protocol v1.1b3 (6.1-6.4, 6.11, 6.12).
MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000
MAX_WRITE_REGISTERS = 123
MAX_WRITE_BITS = 1968

_READ_CLASSES: dict[Table, type[ModbusPDU]] = {
    Table.COIL: ReadCoilsRequest,
    Table.DISCRETE_INPUT: ReadDiscreteInputsRequest,
    Table.HOLDING: ReadHoldingRegistersRequest,
    Table.INPUT: ReadInputRegistersRequest,
}

#: The eight coils of a byte of a bit read's response, the lowest address first.
_BITS = tuple(tuple(bool(byte >> bit & 1) for bit in range(8)) for byte in range(256))

# A client-side decoder: it knows the response classes of every function code.
_DECODER = DecodePDU(is_server=False)


@attrs.frozen
class Request:
    """An encoded request PDU and the shape of the response that answers it."""

    function_code: int
    pdu: bytes
    address: int
    #: Registers or bits read or written.
    count: int
    #: For FC5/FC6/FC22: the value echoed by the response (the encoded 16-bit word(s)).
    echo: bytes = b""


@attrs.frozen
class Response:
    """A decoded response: registers or bits for reads, or an exception code."""

    function_code: int
    registers: tuple[int, ...] = ()
    bits: tuple[bool, ...] = ()
    exception_code: int | None = None


def _encode(pdu: ModbusPDU) -> bytes:
    return bytes([pdu.function_code]) + pdu.encode()


@functools.lru_cache(maxsize=4096)
def read_request(table: Table, address: int, count: int) -> Request:
    """FC1/2/3/4: read ``count`` bits or registers from ``address``.

    Memoised (a `Request` is a frozen value): a poller asks for the same few reads on
    every scan, and building pymodbus' request PDU each time cost more than sending it.
    """
    limit = MAX_READ_BITS if table.is_bits else MAX_READ_REGISTERS
    if not 1 <= count <= limit or not 0 <= address <= 65536 - count:
        raise ValueError(f"cannot read {count} from {address} ({table.value})")
    pdu = _READ_CLASSES[table](address=address, count=count)
    return Request(pdu.function_code, _encode(pdu), address, count)


def write_coil(address: int, value: bool) -> Request:
    """FC5: write one coil."""
    pdu = WriteSingleCoilRequest(address=address, bits=[bool(value)])
    data = _encode(pdu)
    return Request(5, data, address, 1, echo=data[1:])


def write_register(address: int, value: int) -> Request:
    """FC6: write one holding register."""
    pdu = WriteSingleRegisterRequest(address=address, registers=[value])
    data = _encode(pdu)
    return Request(6, data, address, 1, echo=data[1:])


def write_coils(address: int, values: Sequence[bool]) -> Request:
    """FC15: write consecutive coils."""
    if not 1 <= len(values) <= MAX_WRITE_BITS:
        raise ValueError(f"cannot write {len(values)} coils")
    pdu = WriteMultipleCoilsRequest(address=address, bits=[bool(v) for v in values])
    return Request(15, _encode(pdu), address, len(values))


def write_registers(address: int, values: Sequence[int]) -> Request:
    """FC16: write consecutive holding registers."""
    if not 1 <= len(values) <= MAX_WRITE_REGISTERS:
        raise ValueError(f"cannot write {len(values)} registers")
    pdu = WriteMultipleRegistersRequest(address=address, registers=list(values))
    return Request(16, _encode(pdu), address, len(values))


def mask_write_register(address: int, and_mask: int, or_mask: int) -> Request:
    """FC22: ``register = (register AND and_mask) OR (or_mask AND NOT and_mask)``."""
    pdu = MaskWriteRegisterRequest(address=address, and_mask=and_mask, or_mask=or_mask)
    data = _encode(pdu)
    return Request(22, data, address, 1, echo=data[1:])


def decode_response(request: Request, pdu: bytes) -> Response:
    """Check that ``pdu`` answers ``request`` and decode it; `ModbusFrameError` if not."""
    if not pdu:
        raise ModbusFrameError("empty Modbus PDU", offset=0, data=pdu)
    function = pdu[0]
    if function == request.function_code | 0x80:
        if len(pdu) != 2:
            raise ModbusFrameError("exception response of the wrong length", offset=0, data=pdu)
        return Response(request.function_code, exception_code=pdu[1])
    if function != request.function_code:
        raise ModbusFrameError(
            f"function {function} answers a request for function {request.function_code}",
            offset=0,
            data=pdu,
        )
    expected = _expected_length(request)
    if len(pdu) != expected:
        raise ModbusFrameError(
            f"function {function} response of {len(pdu)} bytes (expected {expected})",
            offset=0,
            data=pdu,
        )
    if function <= 4 and pdu[1] != expected - 2:
        raise ModbusFrameError(f"byte count {pdu[1]} (expected {expected - 2})", offset=1, data=pdu)
    if request.echo and pdu[1:] != request.echo:
        raise ModbusFrameError("the response does not echo the write", offset=1, data=pdu)
    # Reads, checked above to the byte, are decoded here rather than by pymodbus (its
    # response objects, a struct call per register and a debug line built every time):
    # one per device per scan, the poller's hot path. The same values, by test.
    if function in (3, 4):
        return Response(function, registers=struct.unpack(f">{request.count}H", pdu[2:]))
    if function in (1, 2):
        bits = itertools.chain.from_iterable(_BITS[byte] for byte in pdu[2:])
        return Response(function, bits=tuple(itertools.islice(bits, request.count)))
    try:
        decoded = _DECODER.decode(pdu)
    except Exception:  # pymodbus raises what it likes; all of it is bad bytes to us
        decoded = None
    if decoded is None:
        raise ModbusFrameError("pymodbus cannot decode the PDU", offset=0, data=pdu)
    if function in (15, 16) and (decoded.address, decoded.count) != (
        request.address,
        request.count,
    ):
        raise ModbusFrameError("the response does not echo the write", offset=1, data=pdu)
    return Response(function)


def _expected_length(request: Request) -> int:
    if request.function_code in (1, 2):
        return 2 + (request.count + 7) // 8
    if request.function_code in (3, 4):
        return 2 + 2 * request.count
    if request.function_code == 22:
        return 7
    return 5
