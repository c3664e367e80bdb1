"""Entity validation."""

import datetime

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.errors import ValidationError
from pydatacoll.model import ENTITIES, Device, TermItem, iso_time

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


class ModelTests(SynchronousTestCase):
    def test_typed_and_normalised(self):
        device = Device.from_json(
            {"id": 4, "protocol": "iec104", "ip": "127.0.0.1", "port": "2407", "colour": ["red"]}
        )
        self.assertEqual(
            device.to_json(),
            {"id": "4", "protocol": "iec104", "ip": "127.0.0.1", "port": 2407, "colour": ["red"]},
        )
        self.assertEqual(Device.from_json({"id": "m", "protocol": "modbus", "ip": "h"}).port, 502)

    def test_errors_name_the_field(self):
        cases = [
            (Device, {"id": "..", "protocol": "iec104", "ip": "a"}, "id"),
            (Device, {"id": "a:b", "protocol": "iec104", "ip": "a"}, "id"),
            (Device, {"id": "1", "protocol": "dnp3", "ip": "a"}, "protocol"),
            (Device, {"id": "1", "protocol": "iec104"}, "ip"),
            (Device, {"id": "1", "protocol": "iec104", "ip": "a", "port": 70000}, "port"),
            (Device, {"id": True, "protocol": "iec104", "ip": "a"}, "id"),
            (
                TermItem,
                {"term_id": "1", "item_id": "2", "up_limit": 1, "down_limit": 2},
                "down_limit",
            ),
            (TermItem, {"term_id": "1", "item_id": "2", "coefficient": "x"}, "coefficient"),
        ]
        for entity, body, field in cases:
            with self.assertRaises(ValidationError) as caught:
                entity.from_json(body)
            self.assertEqual(caught.exception.field, field, body)

    @given(
        entity=st.sampled_from(sorted(ENTITIES)),
        body=st.dictionaries(
            st.sampled_from(
                [
                    "id",
                    "device_id",
                    "term_id",
                    "item_id",
                    "protocol",
                    "ip",
                    "port",
                    "address",
                    "coefficient",
                    "code_type",
                    "protocol_code",
                    "up_limit",
                    "x",
                ]
            )
            | st.text(max_size=5),
            json_values,
            max_size=8,
        )
        | json_values,
    )
    def test_hostile_bodies_raise_only_validation_errors(self, entity, body):
        try:
            ENTITIES[entity].from_json(body)
        except ValidationError:
            pass


class SchemaAgreementTests(SynchronousTestCase):
    """Where the server met the OpenAPI document half-way (found by schemathesis)."""

    def test_integral_floats_are_integers(self):
        """JSON Schema counts 7.0 as an integer: so do ids, ports and code types."""
        item = TermItem.from_json(
            {"term_id": 10.0, "item_id": 1000, "code_type": 45.0, "protocol_code": 7.0}
        )
        self.assertEqual((item.term_id, item.code_type, item.protocol_code), ("10", 45, 7))
        with self.assertRaises(ValidationError):
            TermItem.from_json({"term_id": 1.5, "item_id": "1"})

    def test_numbers_beyond_two_to_the_63_are_refused(self):
        with self.assertRaises(ValidationError) as raised:
            TermItem.from_json({"term_id": "1", "item_id": "1", "coefficient": 1e300})
        self.assertEqual(raised.exception.field, "coefficient")

    def test_host_names_are_at_most_253_characters(self):
        name = ".".join(["a" * 60] * 4)  # 243
        self.assertEqual(Device.from_json({"id": "1", "protocol": "modbus", "ip": name}).ip, name)
        with self.assertRaises(ValidationError):
            Device.from_json({"id": "1", "protocol": "modbus", "ip": name + ".abcdefghijk"})

    def test_bad_attribute_names_are_refused_even_when_null(self):
        with self.assertRaises(ValidationError) as raised:
            ENTITIES["item"].from_json({"id": "1", "a b": None})
        self.assertEqual(raised.exception.field, "a b")

    def test_numbers_as_text_are_exactly_what_the_document_says(self):
        """The predecessor's numeric strings: integers in range, plain decimals; no more."""
        from pydatacoll.model import Field

        port = Field("port", "integer", "", minimum=1, maximum=65535)
        self.assertEqual([port.convert(t) for t in (" 80", "+0443", "65535")], [80, 443, 65535])
        for text in ("0", "65536", "٣", "1e3", "1.0"):
            self.assertRaises(ValidationError, port.convert, text)
        scale = Field("coefficient", "number", "")
        self.assertEqual([scale.convert(t) for t in ("0.5", " -2 ", ".25")], [0.5, -2, 0.25])
        for text in ("1e3", "nan", "inf", "1" * 19):
            self.assertRaises(ValidationError, scale.convert, text)
        ranged = Field("t1", "number", "", minimum=0.1, maximum=255)
        self.assertRaises(ValidationError, ranged.convert, "15")
        self.assertEqual(ranged.convert(15), 15)


class IsoTimeTests(SynchronousTestCase):
    @given(
        st.floats(0, 253402300799.999, allow_nan=False)
        | st.integers(0, 253402300799)
        | st.builds(round, st.floats(1.6e9, 1.9e9), st.integers(0, 7))
        | st.builds(lambda s, m: s + m / 2e6, st.integers(1.6e9, 1.9e9), st.integers(0, 2_000_000))
    )
    def test_as_datetime_writes_it(self, seconds):
        """The memoised whole second and the milliseconds give datetime's own text."""
        moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
        self.assertEqual(iso_time(seconds), moment.isoformat(timespec="milliseconds"))
        self.assertEqual(iso_time(seconds), moment.isoformat(timespec="milliseconds"))

    def test_outside_the_shortcut(self):
        self.assertIsNone(iso_time(None))
        self.assertEqual(iso_time(-0.5), "1969-12-31T23:59:59.500+00:00")
        self.assertEqual(iso_time(0.9999996), "1970-01-01T00:00:01.000+00:00")
        with self.assertRaises((ValueError, OverflowError, OSError)):
            iso_time(1e20)
