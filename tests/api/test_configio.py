"""Configuration export and import (/api/v1/config) and the status page's files, in memory
(the route tests are mixins: tests/integration/test_api_redis_configio.py runs them, and
the command line, over real HTTP and a private redis-server)."""

import csv
import io
import json
import zipfile

from openpyxl import load_workbook
from twisted.internet.defer import inlineCallbacks

from pydatacoll.configio.formats import XLSX_TYPE
from tests.api.support import MemoryApiCase

CONTENT_TYPES = {"json": "application/json", "csv": "application/zip", "xlsx": XLSX_TYPE}


def sample_config():
    """A configuration with the values a round trip could lose."""
    return {
        "devices": [
            {
                "id": "1",
                "name": "concentrator 1",
                "protocol": "iec104",
                "ip": "127.0.0.1",
                "port": 2404,
                "identify": "",
                "tags": ["a", 1, None, {"k": True}],
                "enabled": True,
                "ratio": 1.0,
            },
            {
                "id": "2",
                "name": "=SUM(A1:A9)",
                "protocol": "modbus",
                "ip": "::1",
                "port": 1502,
                "byte_order": "CDAB",
                "note": '"quoted" and\nnew line\r\nCRLF, _x000D_ and \u2028',
                "code": "007",
                "numeric_text": "12",
                "null_text": "null",
            },
            {"id": "3", "name": "calc", "protocol": "formula"},
        ],
        "terms": [
            {"id": "10", "device_id": "1", "address": 5, "name": "meter 1", "protocol": "dlt645"},
            {"id": "20", "device_id": "2", "address": 1, "name": "-5 dB"},
            {"id": "30", "device_id": "3", "name": "\ttabbed\x01"},
        ],
        "items": [
            {"id": "1000", "name": "phase A voltage", "view_code": "1000", "unit": "V"},
            {"id": "1001", "name": "température", "func_type": "measurement"},
            {"id": "2000", "name": "+sum"},
        ],
        "term_items": [
            {
                "term_id": "10",
                "item_id": "1000",
                "protocol_code": 100,
                "code_type": 36,
                "coefficient": 0.1 + 0.2,
                "base_val": -0.0,
                "up_limit": 9e18,
                "down_limit": -230,
            },
            {
                "term_id": "20",
                "item_id": "1001",
                "protocol_code": 3,
                "code_type": "holding",
                "data_type": "float32",
                "byte_order": "CDAB",
                "coefficient": 2**60,
            },
            {"term_id": "20", "item_id": "1000", "protocol_code": 5, "code_type": "holding"},
            {"term_id": "30", "item_id": "2000"},
        ],
        "formulas": [
            {
                "id": "1",
                "formula": "p1 + p2",
                "device_id": "3",
                "term_id": "30",
                "item_id": "2000",
                "p1": "1:10:1000",
                "p2": "2:20:1001",
            }
        ],
    }


class ConfigIoHelpers:
    """Requests with the token, exports and imports, for a harness of tests/api/support.py."""

    token = "s3cret"
    settings_overrides = {"protect_reads": "false", "max_import_body": "3000000"}

    def call(self, method, path, body=None, raw=None, headers=None, auth=True):
        all_headers = dict(self.auth_headers() if auth else {})
        all_headers.update(headers or {})
        return self.raw_call(method, path, body, raw, all_headers)

    def auth_headers(self):
        return {b"Authorization": [f"Bearer {self.token}".encode()]}

    @inlineCallbacks
    def export(self, fmt):
        """GET /api/v1/config in ``fmt``: the raw bytes."""
        response, body = yield self.request(
            "GET", f"/api/v1/config?format={fmt}", headers=self.auth_headers()
        )
        self.assertEqual(response.code, 200, body[:300])
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type")[0].decode(), CONTENT_TYPES[fmt]
        )
        return body

    def send(self, method, fmt, raw, query=""):
        headers = {b"Content-Type": [CONTENT_TYPES[fmt].encode()]}
        return self.call(method, "/api/v1/config" + query, raw=raw, headers=headers)

    @inlineCallbacks
    def stored_configuration(self):
        """Every configuration key of Redis with its content (hashes and sets); a
        Deferred (``sync`` answers with Deferreds over a real redis-server)."""
        state = {}
        for key in (yield self.sync.keys("*")):
            kind = yield self.sync.type(key)
            if kind == "hash":
                state[key] = yield self.sync.hgetall(key)
            elif kind == "set":
                state[key] = sorted((yield self.sync.smembers(key)))
        state.pop("STR:CONFIG_VERSION", None)
        return state

    @inlineCallbacks
    def seed(self):
        raw = json.dumps(sample_config()).encode()
        status, summary = yield self.send("PUT", "json", raw)
        self.assertEqual(status, 200, summary)
        return summary


class ConfigIoRouteTests(ConfigIoHelpers):
    @inlineCallbacks
    def test_round_trip_is_lossless_in_every_format(self):
        """Export, wipe, import gives the same stored configuration, for all three."""
        summary = yield self.seed()
        self.assertEqual(
            summary["created"]["term_items"], ["10:1000", "20:1000", "20:1001", "30:2000"]
        )
        before = yield self.stored_configuration()
        self.assertEqual(json.loads(before["HS:TERM_ITEM:10:1000"]["base_val"]), 0.0)
        self.assertEqual(before["HS:TERM_ITEM:10:1000"]["base_val"], "-0.0")
        for fmt in ("json", "csv", "xlsx"):
            exported = yield self.export(fmt)
            yield self.sync.flushall()
            status, summary = yield self.send("PUT", fmt, exported)
            self.assertEqual(status, 200, (fmt, summary))
            self.assertEqual(len(summary["created"]["devices"]), 3, fmt)
            self.assertEqual((yield self.stored_configuration()), before, fmt)
            again = yield self.export(fmt)
            if fmt != "xlsx":  # a workbook holds its creation time
                self.assertEqual(again, exported, fmt)
            # importing the same file again changes nothing
            status, summary = yield self.send("PUT", fmt, exported)
            self.assertEqual(summary["unchanged"]["term_items"], 4, fmt)
            self.assertEqual(summary["changed"], {k: [] for k in summary["changed"]}, fmt)

    @inlineCallbacks
    def test_export_files_name_their_fields(self):
        yield self.seed()
        archive = zipfile.ZipFile(io.BytesIO((yield self.export("csv"))))
        self.assertEqual(
            sorted(archive.namelist()),
            ["devices.csv", "formulas.csv", "items.csv", "term_items.csv", "terms.csv"],
        )
        header = archive.read("term_items.csv").decode().splitlines()[0].split(",")
        self.assertEqual(header[:4], ["term_id", "item_id", "device_id", "protocol_code"])
        workbook = load_workbook(io.BytesIO((yield self.export("xlsx"))), read_only=True)
        self.assertEqual(
            workbook.sheetnames, ["devices", "terms", "items", "term_items", "formulas"]
        )
        rows = list(workbook["formulas"].iter_rows(values_only=True))
        self.assertEqual(rows[0][:5], ("id", "formula", "device_id", "term_id", "item_id"))
        self.assertEqual(rows[1][:2], ("1", "p1 + p2"))
        self.assertIn("p1", rows[0])
        devices = list(workbook["devices"].iter_rows(values_only=True))
        self.assertEqual(devices[2][1], '"=SUM(A1:A9)"')  # text, never a formula
        workbook.close()
        status, error = yield self.call("GET", "/api/v1/config?format=pdf")
        self.assertEqual((status, error["field"]), (400, "format"))

    @inlineCallbacks
    def test_dry_run_reports_and_changes_nothing(self):
        yield self.seed()
        config = sample_config()
        config["devices"] = [d for d in config["devices"] if d["id"] != "3"]
        config["terms"] = [t for t in config["terms"] if t["id"] != "30"]
        config["items"].append({"id": "3000", "name": "new"})
        config["term_items"] = [p for p in config["term_items"] if p["term_id"] != "30"]
        config["term_items"][0]["coefficient"] = 5
        config["formulas"] = []
        raw = json.dumps(config).encode()
        before = yield self.digest()
        status, summary = yield self.send("PUT", "json", raw, "?dry_run=true")
        self.assertEqual(status, 200, summary)
        self.assertEqual((yield self.digest()), before)
        self.assertEqual(summary["mode"], "replace")
        self.assertTrue(summary["dry_run"])
        self.assertEqual(summary["created"]["items"], ["3000"])
        self.assertEqual(summary["changed"]["term_items"], ["10:1000"])
        self.assertEqual(
            {k: v for k, v in summary["deleted"].items() if v},
            {"devices": ["3"], "terms": ["30"], "term_items": ["30:2000"], "formulas": ["1"]},
        )
        self.assertEqual(summary["unchanged"]["devices"], 2)
        # the same import for real does what the dry run said
        status, real = yield self.send("PUT", "json", raw)
        self.assertEqual(
            {k: v for k, v in real.items() if k not in ("dry_run", "version")},
            {k: v for k, v in summary.items() if k not in ("dry_run", "version")},
        )
        self.assertEqual((yield self.sync.smembers("SET:DEVICE")), {"1", "2"})
        self.assertEqual((yield self.sync.get("STR:CONFIG_VERSION")), real["version"])

    @inlineCallbacks
    def test_merge_keeps_what_the_file_does_not_name(self):
        yield self.seed()
        update = {
            "terms": [{"id": "10", "device_id": "2", "address": 7}],  # moves to device 2
            "term_items": [{"term_id": "10", "item_id": "2000", "protocol_code": 9}],
        }
        yield self.sync.xadd("XS:DATA:1:10:1000", {"sample": json.dumps({"value": 1})})
        status, summary = yield self.send("POST", "json", json.dumps(update).encode())
        self.assertEqual(status, 200, summary)
        self.assertEqual(summary["mode"], "merge")
        self.assertEqual(summary["changed"]["terms"], ["10"])
        self.assertEqual(summary["created"]["term_items"], ["10:2000"])
        self.assertEqual(summary["deleted"], {k: [] for k in summary["deleted"]})
        self.assertEqual((yield self.sync.smembers("SET:DEVICE")), {"1", "2", "3"})
        self.assertEqual((yield self.sync.smembers("SET:DEVICE_TERM:2")), {"10", "20"})
        # the moved term keeps its points, their device and their data
        self.assertEqual((yield self.sync.hget("HS:TERM_ITEM:10:1000", "device_id")), '"2"')
        self.assertEqual((yield self.sync.hget("HS:TERM_ITEM:10:2000", "device_id")), '"2"')
        self.assertEqual((yield self.sync.xlen("XS:DATA:2:10:1000")), 1)
        self.assertEqual((yield self.sync.exists("HS:FORMULA:1")), 1)

    @inlineCallbacks
    def test_invalid_rows_are_named_in_every_format(self):
        yield self.seed()
        before = yield self.digest()
        config = sample_config()
        config["term_items"][2]["coefficient"] = "much"
        status, error = yield self.send("POST", "json", json.dumps(config).encode())
        self.assertEqual(status, 400)
        self.assertEqual(
            (error["sheet"], error["row"], error["field"]), ("term_items", 3, "coefficient")
        )
        csv_zip = yield self.export("csv")
        archive = zipfile.ZipFile(io.BytesIO(csv_zip))
        files = {name: archive.read(name).decode() for name in archive.namelist()}
        rows = list(csv.reader(io.StringIO(files["terms.csv"], newline="")))
        self.assertEqual(rows[2][:2], ["20", "2"])
        rows[2][1] = "99"  # terms.csv row 3 now names a device that is not there
        text = io.StringIO(newline="")
        csv.writer(text).writerows(rows)
        files["terms.csv"] = text.getvalue()
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as out:
            for name, text in files.items():
                out.writestr(name, text)
        status, error = yield self.send("PUT", "csv", buffer.getvalue())
        self.assertEqual(status, 400, error)
        self.assertEqual(
            (error["sheet"], error["row"], error["field"]), ("terms.csv", 3, "device_id")
        )
        self.assertIn("terms.csv row 3", error["message"])
        workbook = load_workbook(io.BytesIO((yield self.export("xlsx"))))
        sheet = workbook["devices"]
        sheet.cell(row=3, column=5, value=70000)  # port of device 2
        buffer = io.BytesIO()
        workbook.save(buffer)
        status, error = yield self.send("PUT", "xlsx", buffer.getvalue())
        self.assertEqual(status, 400, error)
        self.assertEqual((error["sheet"], error["row"], error["field"]), ("devices", 3, "port"))
        self.assertEqual((yield self.digest()), before)

    @inlineCallbacks
    def test_refusals_of_the_configuration_script_name_the_row(self):
        """A formula cycle is found by the script: 409, the row, nothing written."""
        yield self.seed()
        before = yield self.digest()
        update = {
            "formulas": [
                {
                    "id": "2",
                    "formula": "p1",
                    "device_id": "1",
                    "term_id": "10",
                    "item_id": "1000",
                    "p1": "3:30:2000",
                },
            ]
        }
        for query in ("", "?dry_run=true"):
            status, error = yield self.send("POST", "json", json.dumps(update).encode(), query)
            self.assertEqual(status, 409, error)
            self.assertEqual((error["sheet"], error["row"], error["field"]), ("formulas", 1, "p1"))
        self.assertEqual((yield self.digest()), before)

    @inlineCallbacks
    def test_bad_requests(self):
        yield self.seed()
        before = yield self.digest()
        status, error = yield self.call(
            "PUT", "/api/v1/config", raw=b"a,b", headers={b"Content-Type": [b"text/csv"]}
        )
        self.assertEqual(
            (status, error["error"], error["field"]),
            (415, "unsupported_media_type", "Content-Type"),
        )
        status, error = yield self.send("PUT", "json", json.dumps({"devices": []}).encode())
        self.assertEqual((status, error["field"]), (400, "terms"))
        status, error = yield self.send("POST", "json", json.dumps({"meters": []}).encode())
        self.assertEqual((status, error["sheet"]), (400, "meters"))
        status, error = yield self.send("POST", "csv", b"not a zip")
        self.assertEqual(status, 400)
        status, error = yield self.send("POST", "xlsx", b"PK\x03\x04 broken")
        self.assertEqual(status, 400)
        config = sample_config()
        config["items"].append(dict(config["items"][0]))
        status, error = yield self.send("POST", "json", json.dumps(config).encode())
        self.assertEqual(
            (status, error["sheet"], error["row"], error["field"]), (400, "items", 4, "id")
        )
        status, error = yield self.send("POST", "json", b"x" * 3000001)
        self.assertEqual((status, error["error"]), (413, "too_large"))
        bomb = io.BytesIO()
        with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as out:
            out.writestr("devices.csv", "id\r\n" + " " * 13_000_000)
        status, error = yield self.send("POST", "csv", bomb.getvalue())
        self.assertEqual(status, 413, error)
        status, error = yield self.send("POST", "json", b"{}", "?dry_run=maybe")
        self.assertEqual((status, error["field"]), (400, "dry_run"))
        self.assertEqual((yield self.digest()), before)

    @inlineCallbacks
    def test_changes_need_the_token(self):
        raw = json.dumps(sample_config()).encode()
        headers = {b"Content-Type": [b"application/json"]}
        status, error = yield self.call(
            "PUT", "/api/v1/config", raw=raw, headers=headers, auth=False
        )
        self.assertEqual((status, error["error"]), (401, "unauthorized"))
        status, _ = yield self.call("GET", "/api/v1/config", auth=False)
        self.assertEqual(status, 200)  # reads are open unless protect_reads


class ProtectedReadsRouteTests(ConfigIoHelpers):
    settings_overrides = {**ConfigIoHelpers.settings_overrides, "protect_reads": "true"}

    @inlineCallbacks
    def test_export_needs_the_token(self):
        status, error = yield self.call("GET", "/api/v1/config", auth=False)
        self.assertEqual((status, error["error"]), (401, "unauthorized"))
        status, _ = yield self.call("GET", "/api/v1/config")
        self.assertEqual(status, 200)


class StatusPageRouteTests(ConfigIoHelpers):
    """/ui/ is served without the token (it holds no data), with a strict policy."""

    settings_overrides = {**ConfigIoHelpers.settings_overrides, "protect_reads": "true"}

    @inlineCallbacks
    def test_files_and_refusals(self):
        response, page = yield self.request("GET", "/ui/")
        self.assertEqual(response.code, 200)
        self.assertIn(b'<script src="app.js" defer></script>', page)
        policy = response.headers.getRawHeaders(b"content-security-policy")[0]
        self.assertIn(b"script-src 'self'", policy)
        for name, kind in (("app.js", b"text/javascript"), ("app.css", b"text/css")):
            response, _ = yield self.request("GET", f"/ui/{name}")
            self.assertEqual(response.code, 200)
            self.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(kind))
        response, _ = yield self.request("GET", "/ui", allow_redirects=False)
        self.assertEqual(
            (response.code, response.headers.getRawHeaders(b"location")), (301, [b"/ui/"])
        )
        for path in ("/ui/secret.py", "/ui/..%2Fapp.py", "/ui/static"):
            status, error = yield self.call("GET", path, auth=False)
            self.assertEqual((status, error["error"]), (404, "not_found"), path)


class ConfigIoTests(ConfigIoRouteTests, MemoryApiCase):
    pass


class ProtectedReadsTests(ProtectedReadsRouteTests, MemoryApiCase):
    pass


class StatusPageTests(StatusPageRouteTests, MemoryApiCase):
    pass
