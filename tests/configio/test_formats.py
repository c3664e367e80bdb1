"""The cell encoding of configuration files: every value comes back as it went."""

import json
import time
import zipfile
from io import BytesIO

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.configio.formats import (
    _csv_value,
    _xlsx_value,
    cell_text,
    decode,
    encode,
    xlsx_cell,
)

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


def same(a, b):
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


class CellTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(JSON.filter(lambda v: v is not None))
    def test_free_attributes_round_trip(self, value):
        self.assertTrue(same(_csv_value(None, cell_text(None, value)), value))
        self.assertTrue(same(_xlsx_value(None, xlsx_cell(None, value)), value))

    @settings(max_examples=300, deadline=None)
    @given(st.text())
    def test_text_fields_round_trip(self, text):
        self.assertEqual(_csv_value("string", cell_text("string", text)), text)
        self.assertEqual(_xlsx_value("string", xlsx_cell("string", text)), text)

    def test_spreadsheet_hazards_are_quoted(self):
        for text, cell in (
            ("=SUM(A1)", '"=SUM(A1)"'),
            ("", '""'),
            ("@x", '"@x"'),
            ("bell\x07", '"bell\\u0007"'),
            ("plain", "plain"),
            ("1000", "1000"),
        ):
            self.assertEqual(cell_text("string", text), cell)
        self.assertEqual(cell_text(None, "12"), '"12"')  # a free attribute: JSON text
        self.assertEqual(cell_text(None, "1:10:1000"), "1:10:1000")

    def test_numbers_keep_their_type_in_xlsx(self):
        for number in (1, 1.0, -0.0, 0.1 + 0.2, 2**60, 1e20):
            back = _xlsx_value("number", xlsx_cell("number", number))
            if isinstance(back, str):
                back = json.loads(back)
            self.assertEqual((type(back), repr(back)), (type(number), repr(number)))

    def test_edited_spreadsheets_are_read_leniently(self):
        """A number typed into an id or name column is its text; empty rows are skipped."""
        raw = encode({"item": [{"id": "1", "name": "n"}]}, "xlsx")
        imported = decode(raw, "xlsx", max_uncompressed=10**8)
        self.assertEqual(imported.rows["item"][0].entity.id, "1")
        self.assertEqual(_xlsx_value("id", 7.0), "7")
        self.assertEqual(_xlsx_value("string", 1000), "1000")

    def test_csv_exports_are_reproducible(self):
        """The same configuration gives the same zip, whenever exported (no clock inside)."""
        bodies = {"item": [{"id": "1", "name": "n"}]}
        first = encode(bodies, "csv")
        self.patch(time, "time", lambda: 4_000_000_000.0)  # zipfile stamps members with it
        self.patch(time, "localtime", lambda *a: (2096, 10, 2, 7, 6, 40, 1, 276, 0))
        self.assertEqual(encode(bodies, "csv"), first)
        members = zipfile.ZipFile(BytesIO(first)).infolist()
        self.assertEqual({m.date_time for m in members}, {(1980, 1, 1, 0, 0, 0)})
