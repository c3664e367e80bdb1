"""ASDU codec: every type round trip, reference vectors, time tags, hostile bytes."""

import datetime
import struct
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.errors import AsduError, UnknownTypeError
from pydatacoll.protocols.iec104.apci import decode_apdus
from pydatacoll.protocols.iec104.asdu import (
    IEC104,
    SELECT,
    TYPES,
    UTC,
    Asdu,
    AsduParams,
    Cause,
    InformationObject,
    Quality,
    TypeId,
    decode_asdu,
    decode_cp24,
    encode_asdu,
    encode_cp56,
    qualifier_of,
)

H = bytes.fromhex
QDS = [0, 0x01, 0x10, 0x20, 0x40, 0x80, 0xF1]
FLAGS = [0, 0x10, 0x20, 0x40, 0x80, 0xF0]
QDP = [0, 0x08, 0x10, 0x80, 0xF8]


def asdu_of(octets: str) -> Asdu:
    frames, _ = decode_apdus(H(octets))
    return decode_asdu(frames[0].asdu)


class VectorTests(SynchronousTestCase):
    """Frames from the predecessor's reference (5.2) and the c104 capture."""

    def test_single_point_with_cp56(self):
        asdu = asdu_of("68 15 1a 00 06 00 1e 01 03 00 01 00 08 00 00 00 ad 39 1c 10 da 0b 05")
        self.assertEqual(
            asdu.objects(),
            [
                InformationObject(
                    8, False, 0, datetime.datetime(2005, 11, 26, 16, 28, 14, 765000, UTC)
                )
            ],
        )
        self.assertEqual((asdu.type_id, asdu.cause, asdu.common_address), (30, 3, 1))

    def test_float_with_sq1_single_element(self):
        asdu = asdu_of("68 12 04 00 02 00 0d 81 14 00 01 00 e9 03 00 a4 70 45 41 00")
        self.assertTrue(asdu.sequence)
        self.assertEqual(list(asdu.ioas), [1001])
        self.assertAlmostEqual(asdu.values[0], 12.34, places=5)
        self.assertEqual(asdu.cause, Cause.INTERROGATED_BY_STATION)

    def test_negative_confirmation_and_unknown_ioa(self):
        neg = asdu_of("68 0e 0e 00 06 00 2d 01 47 00 01 00 0f 27 00 01")
        self.assertEqual(
            (neg.cause, neg.negative, list(neg.ioas), neg.values), (7, True, [9999], [True])
        )
        unknown = asdu_of("68 0e 10 00 06 00 2d 01 2f 00 01 00 0f 27 00 01")
        self.assertEqual(unknown.cause, Cause.UNKNOWN_IOA)

    def test_originator_address(self):
        asdu = decode_asdu(H("64 01 07 05 01 00 00 00 00 14"))
        self.assertEqual((asdu.cause, asdu.originator, asdu.values), (7, 5, [20]))

    def test_system_commands_encode_as_the_reference(self):
        when = datetime.datetime(2016, 1, 18, 10, 20, 30, 123000, UTC)
        cases = [
            (Asdu(100, 6, 1, [0], [20], [0]), "64 01 06 00 01 00 00 00 00 14"),
            (Asdu(101, 6, 1, [0], [5], [0]), "65 01 06 00 01 00 00 00 00 05"),
            (
                Asdu(103, 6, 1, [0], [None], [0], [when]),
                "67 01 06 00 01 00 00 00 00 ab 75 14 0a 32 01 10",
            ),
            (Asdu(102, 5, 1, [100], [None], [0]), "66 01 05 00 01 00 64 00 00"),
            (Asdu(45, 6, 1, [300], [True], [SELECT]), "2d 01 06 00 01 00 2c 01 00 81"),
            (
                Asdu(63, 6, 1, [300], [123.5], [SELECT], [when]),
                "3f 01 06 00 01 00 2c 01 00 00 00 f7 42 80 ab 75 14 0a 32 01 10",
            ),
        ]
        for asdu, octets in cases:
            self.assertEqual(encode_asdu(asdu), H(octets))
            self.assertEqual(decode_asdu(H(octets)), asdu)

    def test_integrated_totals_big_frame(self):
        objects = [(25811 + i, 30 + 1490 * i, 0, None, i) for i in range(30)]
        asdu = Asdu.build(TypeId.M_IT_NA_1, 37, 1, objects)
        data = encode_asdu(asdu)
        self.assertEqual(len(data), 6 + 30 * 8)
        self.assertEqual(decode_asdu(data).objects()[1], InformationObject(25812, 1520, 0, None, 1))

    def test_qualities_are_kept(self):
        data = H("0d 02 03 00 01 00 01 00 00 00 00 80 3f 81 02 00 00 00 00 00 40 31")
        asdu = decode_asdu(data)
        self.assertEqual(
            asdu.qualities, [Quality.IV | Quality.OV, Quality.SB | Quality.BL | Quality.OV]
        )

    def test_normalised_and_scaled_are_signed(self):
        asdu = decode_asdu(H("09 01 03 00 01 00 01 00 00 00 80 00"))
        self.assertEqual(asdu.values, [-1.0])
        asdu = decode_asdu(H("0b 01 03 00 01 00 01 00 00 ff ff 00"))
        self.assertEqual(asdu.values, [-1])
        asdu = decode_asdu(H("05 01 03 00 01 00 01 00 00 ff 00"))  # VTI -1, transient
        self.assertEqual((asdu.values, asdu.qualities), ([-1], [Quality.TRANSIENT]))

    def test_counter_flags(self):
        asdu = decode_asdu(H("0f 01 25 00 01 00 01 00 00 ff ff ff ff e5"))
        self.assertEqual(asdu.values, [-1])
        self.assertEqual(asdu.qualities, [Quality.IV | Quality.CA | Quality.CY])
        self.assertEqual(asdu.extras, [5])

    def test_qualifiers(self):
        self.assertEqual(qualifier_of(45, 0x80 | 3 << 2), 3)
        self.assertEqual(qualifier_of(50, 0x80 | 7), 7)

    def test_end_of_initialisation(self):
        asdu = decode_asdu(H("46 01 04 00 01 00 00 00 00 82"))
        self.assertEqual((asdu.type_name, asdu.values, asdu.extras), ("M_EI_NA_1", [2], [True]))


class TimeTests(SynchronousTestCase):
    def test_cp56_in_a_zone_with_summer_time(self):
        berlin = ZoneInfo("Europe/Berlin")
        # 2021-10-31 02:30 happens twice in Berlin: SU tells which.
        summer = datetime.datetime(2021, 10, 31, 0, 30, tzinfo=UTC)
        winter = datetime.datetime(2021, 10, 31, 1, 30, tzinfo=UTC)
        for when, su in ((summer, 0x80), (winter, 0)):
            octets = encode_cp56(when, berlin)
            self.assertEqual(octets[3] & 0x80, su)
            self.assertEqual(octets[3] & 0x1F, 2)
            fields = struct.unpack("<HBBBBB", octets)
            asdu = decode_asdu(H("1e 01 03 00 01 00 01 00 00 01") + octets, AsduParams(tz=berlin))
            self.assertEqual(asdu.times[0].astimezone(UTC), when)
            self.assertEqual(fields[1] & 0x3F, 30)

    def test_invalid_time_tags_do_not_close_the_link(self):
        asdu = decode_asdu(H("1e 01 03 00 01 00 01 00 00 01 00 00 00 00 00 00 00"))
        self.assertEqual(asdu.times, [None])
        self.assertEqual(asdu.qualities, [Quality.TIME_INVALID])
        asdu = decode_asdu(H("1e 01 03 00 01 00 01 00 00 01 00 00 80 01 01 01 15"))
        self.assertTrue(asdu.qualities[0] & Quality.TIME_INVALID)
        self.assertIsNotNone(asdu.times[0])

    def test_cp24_takes_the_nearest_hour(self):
        ref = datetime.datetime(2024, 5, 1, 10, 2, 0, tzinfo=UTC)
        self.assertEqual(
            decode_cp24(1000, 59, ref)[0], datetime.datetime(2024, 5, 1, 9, 59, 1, tzinfo=UTC)
        )
        self.assertEqual(
            decode_cp24(0, 5, ref)[0], datetime.datetime(2024, 5, 1, 10, 5, tzinfo=UTC)
        )
        ref = datetime.datetime(2024, 5, 1, 10, 58, 0, tzinfo=UTC)
        self.assertEqual(
            decode_cp24(0, 1, ref)[0], datetime.datetime(2024, 5, 1, 11, 1, tzinfo=UTC)
        )

    def test_cp24_in_an_asdu(self):
        now = datetime.datetime(2024, 5, 1, 10, 2, 0, tzinfo=UTC)
        asdu = decode_asdu(H("02 01 03 00 01 00 07 00 00 01 10 27 01"), now=now)
        self.assertEqual(asdu.times, [datetime.datetime(2024, 5, 1, 10, 1, 10, tzinfo=UTC)])


# --- round trips of every type -----------------------------------------------------------

TIMES = st.datetimes(
    min_value=datetime.datetime(2000, 1, 1), max_value=datetime.datetime(2099, 12, 31)
).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000, tzinfo=UTC))
NOW = datetime.datetime(2024, 5, 1, 10, 2, 3, tzinfo=UTC)
NEAR_NOW = st.integers(-1_790_000, 1_790_000).map(
    lambda ms: NOW + datetime.timedelta(milliseconds=ms)
)
NVA = st.integers(-32768, 32767).map(lambda raw: raw / 32768)
F32 = st.floats(width=32, allow_nan=False)


def element(type_id):
    """A strategy of (value, quality, extra) valid for ``type_id``."""
    base = {
        2: 1,
        4: 3,
        6: 5,
        8: 7,
        10: 9,
        12: 11,
        14: 13,
        16: 15,
        30: 1,
        31: 3,
        32: 5,
        33: 7,
        34: 9,
        35: 11,
        36: 13,
        37: 15,
        38: 17,
        39: 18,
        40: 19,
        58: 45,
        59: 46,
        60: 47,
        61: 48,
        62: 49,
        63: 50,
        64: 51,
    }.get(type_id, type_id)
    s = st.sampled_from
    none = st.none()
    table = {
        1: (st.booleans(), s(FLAGS), none),
        3: (st.integers(0, 3), s(FLAGS), none),
        5: (st.integers(-64, 63), st.sampled_from(QDS).flatmap(lambda q: s([q, q | 0x100])), none),
        7: (st.integers(0, 2**32 - 1), s(QDS), none),
        9: (NVA, s(QDS), none),
        11: (st.integers(-32768, 32767), s(QDS), none),
        13: (F32, s(QDS), none),
        15: (
            st.integers(-(2**31), 2**31 - 1),
            s([0, 0x80, 0x200, 0x400, 0x680]),
            st.integers(0, 31),
        ),
        17: (st.integers(0, 3), s(QDP), st.integers(0, 65535)),
        18: (st.integers(0, 255), s(QDP), st.integers(0, 65535)),
        19: (st.integers(0, 255), s(QDP), st.integers(0, 65535)),
        20: (st.integers(0, 65535), s(QDS), st.integers(0, 65535)),
        21: (NVA, st.just(0), none),
        70: (st.integers(0, 127), st.just(0), st.booleans()),
        45: (st.booleans(), s([0, 0x80, 0x84, 0x7C]), none),
        46: (st.integers(0, 3), s([0, 0x80, 0x84, 0x7C]), none),
        47: (st.integers(0, 3), s([0, 0x80, 0x84]), none),
        48: (NVA, st.integers(0, 255), none),
        49: (st.integers(-32768, 32767), st.integers(0, 255), none),
        50: (F32, st.integers(0, 255), none),
        51: (st.integers(0, 2**32 - 1), st.just(0), none),
        100: (st.integers(0, 255), st.just(0), none),
        101: (st.integers(0, 255), st.just(0), none),
        102: (none, st.just(0), none),
        103: (none, st.just(0), none),
        104: (st.just(0x55AA), st.just(0), none),
        105: (st.integers(0, 255), st.just(0), none),
        106: (st.integers(0, 65535), st.just(0), none),
        107: (st.integers(0, 65535), st.just(0), none),
    }
    return st.tuples(*table[base])


@st.composite
def asdus(draw, params=IEC104):
    type_id = draw(st.sampled_from(sorted(TYPES)))
    spec = TYPES[type_id]
    count = draw(st.integers(1, 6))
    sequence = draw(st.booleans())
    ioa_max = (1 << (8 * params.ioa_size)) - 1
    if sequence:
        first = draw(st.integers(0, ioa_max - count))
        ioas = list(range(first, first + count))
    else:
        ioas = draw(st.lists(st.integers(0, ioa_max), min_size=count, max_size=count))
    objects = []
    for ioa in ioas:
        value, quality, extra = draw(element(type_id))
        when = draw(TIMES) if spec.time == 7 else draw(NEAR_NOW) if spec.time == 3 else None
        objects.append((ioa, value, quality, when, extra))
    return Asdu.build(
        type_id,
        draw(st.integers(0, 63)),
        draw(st.integers(0, (1 << (8 * params.ca_size)) - 1)),
        objects,
        negative=draw(st.booleans()),
        test=draw(st.booleans()),
        originator=draw(st.integers(0, 255)) if params.cot_size == 2 else 0,
        sequence=sequence,
    )


class RoundTripTests(SynchronousTestCase):
    @settings(max_examples=600)
    @given(asdus())
    def test_every_type_round_trips(self, asdu):
        self.assertEqual(decode_asdu(encode_asdu(asdu), now=NOW), asdu)

    @given(asdus(AsduParams(cot_size=1, ca_size=1, ioa_size=2)))
    def test_iec101_field_sizes(self, asdu):
        params = AsduParams(cot_size=1, ca_size=1, ioa_size=2)
        self.assertEqual(decode_asdu(encode_asdu(asdu, params), params, NOW), asdu)

    def test_every_type_of_the_standard_is_known(self):
        expected = [
            *range(1, 22),
            *range(30, 41),
            *range(45, 52),
            *range(58, 65),
            70,
            *range(100, 108),
        ]
        self.assertEqual(sorted(TYPES), expected)

    def test_time_tagged_cp24_round_trip_near_now(self):
        now = datetime.datetime(2024, 5, 1, 10, 2, 3, 4000, tzinfo=UTC)
        for type_id in (2, 4, 6, 8, 10, 12, 14, 16, 17, 18, 19):
            value = True if type_id == 2 else 0.5 if type_id == 10 else 1
            asdu = Asdu.build(type_id, 3, 1, [(5, value, 0, now, None)])
            if TYPES[type_id].has_extra:
                asdu = Asdu.build(type_id, 3, 1, [(5, 1, 0, now, 7)])
            self.assertEqual(decode_asdu(encode_asdu(asdu), now=now), asdu, TypeId(type_id).name)

    def test_sq1_float_frame_of_48(self):
        values = [i * 1.5 for i in range(48)]
        asdu = Asdu(13, 3, 7, range(100, 148), values, [0] * 48, sequence=True)
        data = encode_asdu(asdu)
        self.assertEqual(len(data), 6 + 3 + 48 * 5)
        decoded = decode_asdu(data)
        self.assertEqual(decoded.values, values)
        self.assertEqual(list(decoded.ioas), list(range(100, 148)))

    def test_encode_refuses_bad_values(self):
        for asdu in [
            Asdu(9, 3, 1, [1], [1.5], [0]),  # normalised out of range
            Asdu(11, 3, 1, [1], [40000], [0]),
            Asdu(13, 3, 1, [1], [1e300], [0]),
            Asdu(13, 3, 1, [1, 3], [1.0, 2.0], [0, 0], sequence=True),
            Asdu(30, 3, 1, [1], [True], [0]),  # no time tag
            Asdu(13, 3, 1, [1 << 24], [1.0], [0]),
            Asdu(13, 64, 1, [1], [1.0], [0]),
            Asdu(99, 3, 1, [1], [1.0], [0]),
        ]:
            with self.assertRaises(ValueError, msg=repr(asdu)):
                encode_asdu(asdu)


class HostileTests(SynchronousTestCase):
    def test_unknown_type_is_its_own_error(self):
        with self.assertRaises(UnknownTypeError) as e:
            decode_asdu(H("7a 01 0d 00 01 00 00 00 00 00"))
        self.assertEqual(e.exception.type_id, 122)

    def test_lengths_are_checked(self):
        for octets in ["0d", "0d 02 03 00 01 00 01 00 00 00 00 80 3f 00", "64 00 06 00 01 00 00"]:
            with self.assertRaises(AsduError, msg=octets):
                decode_asdu(H(octets))

    @settings(max_examples=1500)
    @given(st.binary(max_size=260))
    def test_random_bytes_raise_only_asdu_error(self, data):
        try:
            asdu = decode_asdu(data)
        except AsduError:
            return
        self.assertEqual(len(asdu.objects()), data[1] & 0x7F)

    @settings(max_examples=800)
    @given(asdus(), st.data())
    def test_mutated_asdus_raise_only_asdu_error(self, asdu, data):
        octets = bytearray(encode_asdu(asdu))
        for _ in range(data.draw(st.integers(1, 3))):
            octets[data.draw(st.integers(0, len(octets) - 1))] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(octets)))
        try:
            decoded = decode_asdu(bytes(octets[:cut] if data.draw(st.booleans()) else octets))
        except AsduError:
            return
        # Every column has one entry per object (objects() zips them strictly).
        self.assertEqual(len(decoded.objects()), len(decoded.ioas))
