"""MBAP framing of Modbus TCP (Modbus Messaging on TCP/IP Implementation Guide v1.0b, 3.1.3).

Pure code: bytes in, `Adu` values out. A header with a non-zero protocol id or a length
field no PDU can have is a `ModbusFrameError` carrying the offset and the bytes: the
caller drops the link rather than waiting for more data that will never make sense.
"""

from __future__ import annotations

import struct

import attrs

from pydatacoll.errors import ModbusFrameError

#: transaction id, protocol id, length, unit id.
_HEADER = struct.Struct(">HHHB")
HEADER_SIZE = _HEADER.size
#: A PDU is at most 253 bytes (serial line ADU limit of 256 minus address and CRC).
MAX_PDU_SIZE = 253
#: The length field counts the unit id and the PDU (at least a function code).
MIN_LENGTH = 2
MAX_LENGTH = MAX_PDU_SIZE + 1


@attrs.frozen
class Adu:
    """One Modbus TCP application data unit: MBAP header fields and the PDU bytes."""

    transaction_id: int
    unit_id: int
    pdu: bytes


def encode_adu(transaction_id: int, unit_id: int, pdu: bytes) -> bytes:
    """The bytes of one ADU; ``pdu`` starts with the function code."""
    if not 1 <= len(pdu) <= MAX_PDU_SIZE:
        raise ValueError(f"a Modbus PDU is 1 to {MAX_PDU_SIZE} bytes, not {len(pdu)}")
    return _HEADER.pack(transaction_id & 0xFFFF, 0, len(pdu) + 1, unit_id & 0xFF) + pdu


def decode_adus(buffer: bytes) -> tuple[list[Adu], bytes]:
    """Split ``buffer`` into complete ADUs and the incomplete rest.

    Raises `ModbusFrameError` (with the offset of the bad header) for a non-zero protocol
    id or an impossible length; the frames before it are lost with the link.
    """
    adus: list[Adu] = []
    offset = 0
    end = len(buffer)
    while end - offset >= HEADER_SIZE:
        tid, protocol_id, length, unit = _HEADER.unpack_from(buffer, offset)
        if protocol_id != 0:
            raise ModbusFrameError(
                f"MBAP protocol id {protocol_id} (must be 0)",
                offset=offset,
                data=buffer[offset : offset + HEADER_SIZE + MAX_PDU_SIZE],
            )
        if not MIN_LENGTH <= length <= MAX_LENGTH:
            raise ModbusFrameError(
                f"MBAP length {length} (must be {MIN_LENGTH} to {MAX_LENGTH})",
                offset=offset,
                data=buffer[offset : offset + HEADER_SIZE + MAX_PDU_SIZE],
            )
        frame_end = offset + HEADER_SIZE - 1 + length
        if frame_end > end:
            break
        adus.append(Adu(tid, unit, bytes(buffer[offset + HEADER_SIZE : frame_end])))
        offset = frame_end
    return adus, bytes(buffer[offset:])
