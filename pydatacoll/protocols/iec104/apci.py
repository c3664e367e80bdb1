"""APCI: the IEC 60870-5-104 frame layer (I, S and U formats), pure.

Every APDU is ``0x68``, a length octet L (4 to 253: the octets after it), four control
octets and, for I-frames, an ASDU. Sequence numbers are 15 bits (IEC 60870-5-104 5.1).
"""

from __future__ import annotations

import enum

import attrs

from pydatacoll.errors import ApciError

START = 0x68
#: The largest value of the length octet (IEC 60870-5-104 5.1: APDU at most 255 octets).
MAX_LENGTH = 253
#: The largest ASDU an I-frame can carry.
MAX_ASDU = MAX_LENGTH - 4
SEQ_MODULO = 1 << 15


class UFunction(enum.IntEnum):
    """The U-format functions, as their first control octet."""

    STARTDT_ACT = 0x07
    STARTDT_CON = 0x0B
    STOPDT_ACT = 0x13
    STOPDT_CON = 0x23
    TESTFR_ACT = 0x43
    TESTFR_CON = 0x83


_U_FUNCTIONS = {f.value: f for f in UFunction}


@attrs.frozen(slots=True)
class IFrame:
    """An information transfer frame: N(S), N(R) and the ASDU octets."""

    send_seq: int
    recv_seq: int
    asdu: bytes


@attrs.frozen(slots=True)
class SFrame:
    """A supervisory frame: acknowledges every I-frame below ``recv_seq``."""

    recv_seq: int


@attrs.frozen(slots=True)
class UFrame:
    """An unnumbered control frame (STARTDT, STOPDT, TESTFR; act or con)."""

    function: UFunction


Frame = IFrame | SFrame | UFrame


def decode_apdus(buffer: bytes | bytearray) -> tuple[list[Frame], int]:
    """The whole frames at the start of ``buffer`` and how many octets they used.

    A partial frame at the end is left for the next call. Anything that is not a valid
    APCI raises `ApciError` with the offset of the offending frame.
    """
    frames: list[Frame] = []
    append = frames.append
    pos = 0
    end = len(buffer)
    while end - pos >= 2:
        if buffer[pos] != START:
            raise ApciError(f"start octet 0x{buffer[pos]:02x}, not 0x68", offset=pos, data=buffer)
        length = buffer[pos + 1]
        if length < 4 or length > MAX_LENGTH:
            raise ApciError(f"APDU length {length} not in 4..253", offset=pos, data=buffer)
        stop = pos + 2 + length
        if stop > end:
            break
        c1 = buffer[pos + 2]
        if not c1 & 1:
            c3 = buffer[pos + 4]
            if c3 & 1:
                raise ApciError("I-frame with bit 1 of N(R) set", offset=pos, data=buffer)
            if length == 4:
                raise ApciError("I-frame without an ASDU", offset=pos, data=buffer)
            append(
                IFrame(
                    (c1 | buffer[pos + 3] << 8) >> 1,
                    (c3 | buffer[pos + 5] << 8) >> 1,
                    bytes(buffer[pos + 6 : stop]),
                )
            )
        elif length != 4:
            raise ApciError(f"S/U-frame of length {length}, not 4", offset=pos, data=buffer)
        elif c1 == 0x01:
            if buffer[pos + 3] or buffer[pos + 4] & 1:
                raise ApciError("malformed S-frame control field", offset=pos, data=buffer)
            append(SFrame((buffer[pos + 4] | buffer[pos + 5] << 8) >> 1))
        else:
            function = _U_FUNCTIONS.get(c1)
            if function is None or buffer[pos + 3] or buffer[pos + 4] or buffer[pos + 5]:
                raise ApciError(
                    f"unknown U-frame control field {bytes(buffer[pos + 2 : stop]).hex(' ')}",
                    offset=pos,
                    data=buffer,
                )
            append(UFrame(function))
        pos = stop
    return frames, pos


def encode_i(send_seq: int, recv_seq: int, asdu: bytes) -> bytes:
    """An I-frame carrying ``asdu``."""
    if not 0 < len(asdu) <= MAX_ASDU:
        raise ValueError(f"an ASDU must have 1 to {MAX_ASDU} octets, not {len(asdu)}")
    s = (send_seq % SEQ_MODULO) << 1
    r = (recv_seq % SEQ_MODULO) << 1
    return bytes((START, len(asdu) + 4, s & 0xFF, s >> 8, r & 0xFF, r >> 8)) + asdu


def encode_s(recv_seq: int) -> bytes:
    """An S-frame acknowledging every I-frame below ``recv_seq``."""
    r = (recv_seq % SEQ_MODULO) << 1
    return bytes((START, 4, 0x01, 0x00, r & 0xFF, r >> 8))


def encode_u(function: UFunction) -> bytes:
    """A U-frame."""
    return bytes((START, 4, int(function), 0, 0, 0))


def encode_frame(frame: Frame) -> bytes:
    """Any frame value as octets."""
    if isinstance(frame, IFrame):
        return encode_i(frame.send_seq, frame.recv_seq, frame.asdu)
    if isinstance(frame, SFrame):
        return encode_s(frame.recv_seq)
    return encode_u(frame.function)


def seq_distance(lower: int, upper: int) -> int:
    """How many sequence numbers from ``lower`` up to ``upper``, modulo 2**15."""
    return (upper - lower) % SEQ_MODULO
