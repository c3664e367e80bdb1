"""Schemathesis hooks for `test_api_contract` (loaded with ``SCHEMATHESIS_HOOKS``).

- ``before_call`` keeps the devices the run creates away from anything real: every
  well-formed host becomes 127.0.0.1 and every port ``PYDATACOLL_CLOSED_PORT``, where
  nobody listens.
- ``positive_data_acceptance_or_rule`` is schemathesis's own ``positive_data_acceptance``
  made to read the document: a schema-valid request may be refused with 400 only when the
  answer names a field of a rule the document lists under ``x-cross-field-rules`` (rules
  over several fields, or over the stored configuration, that JSON Schema cannot state).
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

import schemathesis

from pydatacoll.model import Field

CLOSED_PORT = int(os.environ.get("PYDATACOLL_CLOSED_PORT", "9"))
_HOST = Field("ip", "host", "")
_DEVICE_PATHS = ("/api/v1/devices", "/api/v2/devices")
#: 413: a body over [api] max_body (a list of MAX_BATCH long ids can be), a limit on bytes
#: that JSON Schema cannot state.
ACCEPTED = {401, 403, 404, 409, 413, 429}


def _is_host(value: Any) -> bool:
    try:
        _HOST.convert(value)
    except Exception:
        return False
    return True


def _isolate(device: Any) -> None:
    if not isinstance(device, dict):
        return
    if _is_host(device.get("ip")):
        device["ip"] = "127.0.0.1"
    port = device.get("port")
    if isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535:
        device["port"] = CLOSED_PORT
    endpoints = device.get("endpoints")
    if isinstance(endpoints, list):
        device["endpoints"] = [
            f"127.0.0.1:{CLOSED_PORT}" if isinstance(e, str) and ":" in e else e for e in endpoints
        ]


#: Expressions that compile (the grammar is a rule JSON Schema cannot state).
EXPRESSIONS = ("1", "(2 + 3) * 4", "max(1, 2.5)", "abs(-4.5) - 1", "min(7, 3) / 2")


def _compilable(formula: Any) -> None:
    if isinstance(formula, dict) and isinstance(formula.get("formula"), str):
        choices = EXPRESSIONS + (("p1 * 2",) if isinstance(formula.get("p1"), str) else ())
        formula["formula"] = choices[len(formula["formula"]) % len(choices)]


def _number(body: dict[str, Any], name: str, default: float) -> float:
    value = body.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return default


def _ordered(body: dict[str, Any], low: str, high: str, defaults: tuple[float, float]) -> None:
    """Make ``body[low] <= body[high]`` (with the server's defaults) by swapping them."""
    a, b = _number(body, low, defaults[0]), _number(body, high, defaults[1])
    if a > b:
        body[low], body[high] = b, a


def _within_rules(device: Any) -> None:
    """Give a schema-valid device settings that meet its protocol's cross-field rules
    (w <= k, t2 < t1, degrade_time <= degrade_max), so that it is accepted and runs."""
    if not isinstance(device, dict):
        return
    if device.get("protocol") == "iec104":  # a device's or a gateway's link
        _ordered(device, "w", "k", (8, 12))
        t1, t2 = _number(device, "t1", 15), _number(device, "t2", 10)
        if t2 >= t1:
            if t2 + 1 <= 255:
                device["t1"] = t2 + 1
            else:
                device["t1"], device["t2"] = 15, 10
    elif device.get("protocol") == "modbus":
        _ordered(device, "degrade_time", "degrade_max", (10, 300))


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: Any) -> None:
    """Point every device the request creates or changes at a closed local port; give
    the formulas of schema-valid requests an expression that compiles."""
    bodies = case.body if isinstance(case.body, list) else [case.body]
    if case.path.startswith(_DEVICE_PATHS) and not case.path.endswith("/del"):
        for device in bodies:
            _isolate(device)
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if positive and case.path.startswith(_DEVICE_PATHS) and not case.path.endswith("/del"):
        for device in bodies:
            _within_rules(device)
    if positive and case.path.startswith("/api/v1/gateways") and "/points" not in case.path:
        _within_rules(case.body)
        if isinstance(case.body, dict):
            # A gateway the run creates listens on a free loopback port, never on 2404.
            case.body["listen"] = "tcp:0:interface=127.0.0.1"
    if positive and case.method in ("PUT", "POST") and isinstance(case.body, dict):
        # The URL names the entity: a body naming another one is a conflict (409), which
        # says nothing about the body. Repeat the URL's ids so the request is judged.
        for name, value in (case.path_parameters or {}).items():
            key = "id" if name in ("entity_id", "formula_id") else name
            if case.body.get(key) is not None:
                case.body[key] = value
    if positive and case.operation.path.startswith(("/api/v1/formulas", "/api/v2/formulas")):
        for formula in bodies:
            _compilable(formula)


_RULES: dict[str, set[str]] = {}


def _rules(case: Any) -> set[str]:
    """The fields named by ``x-cross-field-rules`` of the operation's request body."""
    if not _RULES:
        url = os.environ["PYDATACOLL_OPENAPI_URL"]
        with urllib.request.urlopen(url, timeout=10) as response:
            document = json.load(response)
        schemas = document["components"]["schemas"]

        def collect(schema: Any, seen: set[str]) -> set[str]:
            found: set[str] = set()
            if isinstance(schema, dict):
                ref = schema.get("$ref")
                if isinstance(ref, str) and ref not in seen:
                    found |= collect(schemas[ref.rsplit("/", 1)[1]], seen | {ref})
                found |= set(schema.get("x-cross-field-rules", {}))
                for value in schema.values():
                    found |= collect(value, seen)
            elif isinstance(schema, list):
                for value in schema:
                    found |= collect(value, seen)
            return found

        for path, methods in document["paths"].items():
            for method, operation in methods.items():
                body = operation.get("requestBody", {})
                _RULES[f"{method.upper()} {path}"] = collect(body, set())
    return _RULES.get(f"{case.method.upper()} {case.operation.path}", set())


@schemathesis.check
def positive_data_acceptance_or_rule(ctx: Any, response: Any, case: Any) -> bool | None:
    """A schema-valid request is accepted, or refused by a rule the document lists."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    status = response.status_code
    if status < 400 or status >= 500 or status in ACCEPTED:
        return None
    if status == 400:
        try:
            field = json.loads(response.content).get("field")
        except (ValueError, AttributeError):
            field = None
        if field in _rules(case):
            return None
    raise AssertionError(
        f"a schema-valid request was refused with {status}: {response.content[:300]!r}"
    )


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    """With ``PYDATACOLL_CONTRACT_LOG`` set: one line per answer, for the test's report."""
    path = os.environ.get("PYDATACOLL_CONTRACT_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            # One line whatever the answer (a zip or workbook export holds \r and \n).
            text = " ".join(response.content[:200].decode("utf-8", "replace").split())
            mode = "positive" if case.meta and case.meta.generation.mode.is_positive else "negative"
            sent = (
                json.dumps(case.body, default=repr)[:200]
                if isinstance(case.body, (dict, list))
                else ""
            )
            route = f"{case.method} {case.operation.path}"
            log.write(f"{route} {response.status_code} {mode} {text} <- {sent}\n")
