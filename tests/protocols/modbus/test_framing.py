"""MBAP framing and response PDU decoding: split, coalesced, garbage, exceptions."""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.errors import ModbusFrameError
from pydatacoll.protocols.modbus import pdu as pdus
from pydatacoll.protocols.modbus.codec import Table
from pydatacoll.protocols.modbus.framing import Adu, decode_adus, encode_adu

# FC3 response from the dependency notes, captured from pymodbus' server.
CAPTURED = bytes.fromhex("0001 0000 000f 01 03 0c 0064 00c8 012c 0190 4148 0000")


class FramingTests(SynchronousTestCase):
    def test_captured_frame(self):
        adus, rest = decode_adus(CAPTURED)
        self.assertEqual(rest, b"")
        self.assertEqual(adus, [Adu(1, 1, CAPTURED[7:])])
        request = pdus.read_request(Table.HOLDING, 0, 6)
        response = pdus.decode_response(request, adus[0].pdu)
        self.assertEqual(response.registers, (100, 200, 300, 400, 0x4148, 0))

    def test_encode_matches_the_notes(self):
        request = pdus.read_request(Table.HOLDING, 0, 4)
        self.assertEqual(encode_adu(7, 1, request.pdu).hex(), "000700000006010300000004")

    @given(st.lists(st.binary(min_size=1, max_size=253), min_size=1, max_size=5), st.data())
    def test_split_anywhere_and_coalesced(self, pdus_, data):
        stream = b"".join(encode_adu(i, i % 256, p) for i, p in enumerate(pdus_))
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
        got, buffer, last = [], b"", 0
        for cut in [*cuts, len(stream)]:
            buffer += stream[last:cut]
            last = cut
            adus, buffer = decode_adus(buffer)
            got.extend(adus)
        self.assertEqual(buffer, b"")
        self.assertEqual([a.pdu for a in got], pdus_)
        self.assertEqual([a.transaction_id for a in got], list(range(len(pdus_))))

    def test_bad_protocol_id_is_an_error_not_a_stall(self):
        good = encode_adu(1, 1, b"\x03\x02\x00\x01")
        bad = bytes.fromhex("0002 0001 0005 01 03 02 0001")
        with self.assertRaises(ModbusFrameError) as caught:
            decode_adus(good + bad)
        self.assertEqual(caught.exception.offset, len(good))
        self.assertEqual(caught.exception.data[:4], bad[:4])

    def test_absurd_lengths(self):
        for length in (0, 1, 255, 0xFFFF):
            with self.assertRaises(ModbusFrameError):
                decode_adus(b"\x00\x01\x00\x00" + length.to_bytes(2, "big") + b"\x01\x03")

    def test_partial_header_waits(self):
        self.assertEqual(decode_adus(b"\x00\x01\x00"), ([], b"\x00\x01\x00"))

    @given(st.binary(max_size=600))
    def test_hostile_bytes_raise_only_frame_errors(self, data):
        try:
            decode_adus(data)
        except ModbusFrameError:
            pass


class ResponseTests(SynchronousTestCase):
    def test_exception_response(self):
        request = pdus.read_request(Table.HOLDING, 100, 2)
        response = pdus.decode_response(request, b"\x83\x02")
        self.assertEqual(response.exception_code, 2)

    def test_bits(self):
        request = pdus.read_request(Table.COIL, 0, 10)
        response = pdus.decode_response(request, b"\x01\x02\x05\x02")
        self.assertEqual(
            response.bits, (True, False, True, False, False, False, False, False, False, True)
        )

    def test_mismatches(self):
        request = pdus.read_request(Table.HOLDING, 0, 2)
        for pdu in (
            b"\x04\x04\x00\x01\x00\x02",  # other function
            b"\x03\x02\x00\x01",  # too few registers
            b"\x03\x05\x00\x01\x00\x02",  # byte count lies
            b"\x83",  # short exception
            b"",
        ):
            with self.assertRaises(ModbusFrameError):
                pdus.decode_response(request, pdu)

    def test_write_echo(self):
        request = pdus.write_register(5, 0x1234)
        pdus.decode_response(request, request.pdu)
        with self.assertRaises(ModbusFrameError):
            pdus.decode_response(request, b"\x06\x00\x05\x12\x35")
        request = pdus.write_registers(5, [1, 2, 3])
        pdus.decode_response(request, b"\x10\x00\x05\x00\x03")
        with self.assertRaises(ModbusFrameError):
            pdus.decode_response(request, b"\x10\x00\x05\x00\x02")
        request = pdus.write_coils(5, [True, False])
        pdus.decode_response(request, b"\x0f\x00\x05\x00\x02")
        request = pdus.mask_write_register(5, 0xFFFE, 1)
        pdus.decode_response(request, request.pdu)
        request = pdus.write_coil(5, True)
        self.assertEqual(request.pdu, b"\x05\x00\x05\xff\x00")

    @given(
        st.sampled_from(
            [
                pdus.read_request(Table.HOLDING, 0, 3),
                pdus.read_request(Table.COIL, 0, 9),
                pdus.read_request(Table.INPUT, 7, 125),
                pdus.read_request(Table.DISCRETE_INPUT, 7, 2000),
                pdus.write_coil(1, False),
                pdus.write_register(1, 2),
                pdus.write_registers(1, [2, 3]),
                pdus.write_coils(1, [True] * 9),
                pdus.mask_write_register(1, 2, 3),
            ]
        ),
        st.binary(max_size=300),
    )
    def test_hostile_pdus_raise_only_frame_errors(self, request, pdu):
        try:
            response = pdus.decode_response(request, bytes([request.function_code]) + pdu)
        except ModbusFrameError:
            return
        if request.function_code in (3, 4):
            self.assertEqual(len(response.registers), request.count)
        if request.function_code in (1, 2):
            self.assertEqual(len(response.bits), request.count)

    def test_request_limits(self):
        for table, count in ((Table.HOLDING, 126), (Table.COIL, 2001), (Table.INPUT, 0)):
            with self.assertRaises(ValueError):
                pdus.read_request(table, 0, count)
        with self.assertRaises(ValueError):
            pdus.read_request(Table.HOLDING, 65535, 2)

    @given(
        st.sampled_from(list(Table)),
        st.integers(0, 65535),
        st.data(),
    )
    def test_reads_decode_as_pymodbus_does(self, table, address, data):
        """Our decoding of a read's response gives what pymodbus' own decoder gives."""
        limit = pdus.MAX_READ_BITS if table.is_bits else pdus.MAX_READ_REGISTERS
        count = data.draw(st.integers(1, min(limit, 65536 - address)))
        request = pdus.read_request(table, address, count)
        size = (count + 7) // 8 if table.is_bits else 2 * count
        payload = data.draw(st.binary(min_size=size, max_size=size))
        pdu = bytes([request.function_code, size]) + payload
        response = pdus.decode_response(request, pdu)
        theirs = pdus._DECODER.decode(pdu)
        if table.is_bits:
            self.assertEqual(response.bits, tuple(theirs.bits[:count]))
            self.assertEqual(response.registers, ())
        else:
            self.assertEqual(response.registers, tuple(theirs.registers))
            self.assertEqual(response.bits, ())

    def test_read_requests_are_shared_values(self):
        """A poller's same read is one frozen value, built once (and still checked)."""
        first = pdus.read_request(Table.HOLDING, 10, 30)
        self.assertIs(pdus.read_request(Table.HOLDING, 10, 30), first)
        self.assertEqual(first.pdu, bytes.fromhex("03000a001e"))
        self.assertIsNot(pdus.read_request(Table.INPUT, 10, 30), first)
        with self.assertRaises(ValueError):
            pdus.read_request(Table.HOLDING, 10, 0)
