"""APCI framing: reference vectors, split and coalesced frames, hostile bytes."""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.errors import ApciError
from pydatacoll.protocols.iec104.apci import (
    IFrame,
    SFrame,
    UFrame,
    UFunction,
    decode_apdus,
    encode_frame,
    encode_i,
    encode_s,
    encode_u,
    seq_distance,
)

H = bytes.fromhex


class VectorTests(SynchronousTestCase):
    """Octets from the predecessor's reference (section 5.2) and a c104 capture."""

    def test_u_frames(self):
        for function, octets in [
            (UFunction.STARTDT_ACT, "68 04 07 00 00 00"),
            (UFunction.STARTDT_CON, "68 04 0b 00 00 00"),
            (UFunction.STOPDT_ACT, "68 04 13 00 00 00"),
            (UFunction.STOPDT_CON, "68 04 23 00 00 00"),
            (UFunction.TESTFR_ACT, "68 04 43 00 00 00"),
            (UFunction.TESTFR_CON, "68 04 83 00 00 00"),
        ]:
            self.assertEqual(encode_u(function), H(octets))
            self.assertEqual(decode_apdus(H(octets)), ([UFrame(function)], 6))

    def test_s_frame(self):
        self.assertEqual(encode_s(74), H("68 04 01 00 94 00"))
        self.assertEqual(decode_apdus(H("68 04 01 00 94 00")), ([SFrame(74)], 6))

    def test_i_frame_sequence_numbers(self):
        frames, used = decode_apdus(H("68 0e e8 00 06 00 65 01 0a 00 01 00 00 00 00 05"))
        self.assertEqual(used, 16)
        self.assertEqual((frames[0].send_seq, frames[0].recv_seq), (116, 3))
        self.assertEqual(frames[0].asdu, H("65 01 0a 00 01 00 00 00 00 05"))

    def test_sequence_numbers_wrap_at_15_bits(self):
        frame = encode_i(32767 + 1, 32767, b"\x01")
        self.assertEqual(decode_apdus(frame)[0], [IFrame(0, 32767, b"\x01")])
        self.assertEqual(seq_distance(32766, 1), 3)


class SplitTests(SynchronousTestCase):
    def test_partial_frames_wait(self):
        data = encode_u(UFunction.TESTFR_ACT) + encode_i(1, 2, H("0d 81 14 00 01 00"))
        for cut in range(len(data)):
            frames, used = decode_apdus(data[:cut])
            rest_frames, rest_used = decode_apdus(data[used:])
            self.assertEqual(len(frames) + len(rest_frames), 2)
            self.assertEqual(used + rest_used, len(data))

    def test_coalesced(self):
        data = b"".join(encode_s(i) for i in range(10))
        frames, used = decode_apdus(data)
        self.assertEqual([f.recv_seq for f in frames], list(range(10)))
        self.assertEqual(used, 60)


class HostileTests(SynchronousTestCase):
    def test_bad_start_octet(self):
        with self.assertRaises(ApciError) as e:
            decode_apdus(encode_s(1) + H("69 04 01 00 00 00"))
        self.assertEqual(e.exception.offset, 6)

    def test_bad_lengths_and_control_fields(self):
        for octets in [
            "68 03 01 00 00 00",  # length below 4
            "68 fe" + " 00" * 254,  # length above 253
            "68 04 00 00 00 00",  # I-frame without ASDU
            "68 05 01 00 00 00 00",  # S-frame with an ASDU
            "68 04 17 00 00 00",  # unknown U function
            "68 04 07 00 00 01",  # U-frame with trailing bits
            "68 04 01 01 00 00",  # S-frame with bits in the second octet
            "68 05 00 00 01 00 01",  # I-frame with bit 1 of N(R) set
        ]:
            with self.assertRaises(ApciError, msg=octets):
                decode_apdus(H(octets))

    @given(st.binary(max_size=600))
    def test_random_bytes_raise_only_apci_error(self, data):
        try:
            frames, used = decode_apdus(data)
        except ApciError:
            return
        self.assertLessEqual(used, len(data))
        self.assertEqual(b"".join(encode_frame(f) for f in frames), data[:used])

    @given(st.lists(st.integers(0, 32767), min_size=1, max_size=5), st.data())
    def test_mutated_frames(self, seqs, data):
        frame = bytearray(
            b"".join(encode_i(s, s, H("0d 01 03 00 01 00 01 00 00 00 00 80 3f 00")) for s in seqs)
        )
        for _ in range(data.draw(st.integers(1, 4))):
            frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
        try:
            decode_apdus(bytes(frame))
        except ApciError:
            pass
