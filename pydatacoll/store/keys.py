"""Every Redis key and channel name PyDataColl uses, in one place.

Templates use ``%s`` for ids (``DEVICE % "1"`` -> ``HS:DEVICE:1``); ids never contain
``%``, ``:``, ``*``, ``?`` or ``[`` (see `pydatacoll.model.ID_PATTERN`), so a key names
exactly one entity and no id can widen a pattern. The Lua scripts receive these same
templates, so a name changes here only.

Entity hashes hold one field per attribute; every field value is JSON text
(``"\\"meter 1\\""``, ``"2404"``, ``"true"``), so numbers stay numbers.
"""

from __future__ import annotations

from typing import Any

# -- configuration --------------------------------------------------------------------
DEVICE = "HS:DEVICE:%s"
DEVICES = "SET:DEVICE"
TERM = "HS:TERM:%s"
TERMS = "SET:TERM"
DEVICE_TERMS = "SET:DEVICE_TERM:%s"
ITEM = "HS:ITEM:%s"
ITEMS = "SET:ITEM"
TERM_ITEM = "HS:TERM_ITEM:%s:%s"
TERM_ITEMS = "SET:TERM_ITEM:%s"
ITEM_TERMS = "SET:ITEM_TERM:%s"
CONFIG_VERSION = "STR:CONFIG_VERSION"
#: "<origin>:<stamp>" of the last change: <origin> is set (Redis TIME) by the first change
#: of a history and kept, <stamp> is the TIME of each change (config.lua).
CONFIG_HISTORY = "STR:CONFIG_HISTORY"
#: Formulas (calculated points); the reverse index is keyed by the point "d:t:i".
FORMULA = "HS:FORMULA:%s"
FORMULAS = "SET:FORMULA"
FORMULA_PARAM = "SET:FORMULA_PARAM:%s"
#: Northbound gateways (IEC 104 controlled stations) and their points, by IOA.
GATEWAY = "HS:GATEWAY:%s"
GATEWAYS = "SET:GATEWAY"
GATEWAY_POINT = "HS:GATEWAY_POINT:%s:%s"
GATEWAY_POINTS = "SET:GATEWAY_POINT:%s"
#: Gateway states (written by the gateway service), field gateway id -> JSON status.
GATEWAY_STATUS = "HS:GATEWAY_STATUS"

# -- runtime data (written by the collector; deleted here with their point/device) ------
POINT_DATA = "XS:DATA:%s:%s:%s"
DEVICE_VALUES = "HS:VALUE:%s"
DEVICE_STATUS = "HS:DEVICE_STATUS:%s"
FRAME_LOG = "LST:FRAME:%s"
#: device_ctrl audit stream (bounded by [api] ctrl_log_length).
CTRL_LOG = "XS:CTRL_LOG"
#: A device_ctrl's answer, set once (NX, expiring) by whoever audits it: the collector
#: (its answer) or the API (``timeout``).
CTRL_DONE = "STR:CTRL_DONE:%s"
#: Active alarms, field {device}:{term}:{item}:{kind} -> JSON event; and their history.
ALARMS = "HS:ALARM"
ALARM_LOG = "XS:ALARM_LOG"
#: Plugin states, field plugin name -> JSON status.
PLUGIN_STATUS = "HS:PLUGIN_STATUS"
#: Collectors running a plugin, field collector instance -> ISO time of its last report.
PLUGIN_RUNNING = "HS:PLUGIN_RUNNING:%s"
#: Formula states (written by the formulas plugin), field formula id -> JSON status.
FORMULA_STATUS = "HS:FORMULA_STATUS"

# -- channels ---------------------------------------------------------------------------
CHANNEL_PREFIX = "CHANNEL:"
DEVICE_ADD = "CHANNEL:DEVICE_ADD"
DEVICE_FRESH = "CHANNEL:DEVICE_FRESH"
DEVICE_DEL = "CHANNEL:DEVICE_DEL"
TERM_ADD = "CHANNEL:TERM_ADD"
TERM_FRESH = "CHANNEL:TERM_FRESH"
TERM_DEL = "CHANNEL:TERM_DEL"
ITEM_ADD = "CHANNEL:ITEM_ADD"
ITEM_FRESH = "CHANNEL:ITEM_FRESH"
ITEM_DEL = "CHANNEL:ITEM_DEL"
TERM_ITEM_ADD = "CHANNEL:TERM_ITEM_ADD"
TERM_ITEM_FRESH = "CHANNEL:TERM_ITEM_FRESH"
TERM_ITEM_DEL = "CHANNEL:TERM_ITEM_DEL"
DEVICE_CALL = "CHANNEL:DEVICE_CALL"
DEVICE_CTRL = "CHANNEL:DEVICE_CTRL"
#: One sample of a point (only with [collector] publish_points = true).
DEVICE_DATA = "CHANNEL:DEVICE_DATA:%s:%s:%s"
#: Every sample of a device, in batches of at most 40 (store/ingest.py MESSAGE_SAMPLES):
#: {"device_id", "samples": [message, ...]}.
DEVICE_SAMPLES = "CHANNEL:DEVICE_SAMPLES:%s"
#: A device's status, JSON, on every write: CHANNEL:DEVICE_STATUS:{device_id}.
DEVICE_STATUS_CHANNEL = "CHANNEL:DEVICE_STATUS:%s"
#: Replies to device_call/device_ctrl: CHANNEL:REPLY:{api instance}:{request_id}.
REPLY = "CHANNEL:REPLY:%s:%s"
REPLY_PATTERN = "CHANNEL:REPLY:%s:*"
ALARM = "CHANNEL:ALARM"
FORMULA_ADD = "CHANNEL:FORMULA_ADD"
FORMULA_FRESH = "CHANNEL:FORMULA_FRESH"
FORMULA_DEL = "CHANNEL:FORMULA_DEL"
GATEWAY_ADD = "CHANNEL:GATEWAY_ADD"
GATEWAY_FRESH = "CHANNEL:GATEWAY_FRESH"
GATEWAY_DEL = "CHANNEL:GATEWAY_DEL"
GATEWAY_POINT_ADD = "CHANNEL:GATEWAY_POINT_ADD"
GATEWAY_POINT_FRESH = "CHANNEL:GATEWAY_POINT_FRESH"
GATEWAY_POINT_DEL = "CHANNEL:GATEWAY_POINT_DEL"

#: entity -> operation -> channel of its change messages.
CHANGE_CHANNELS: dict[str, dict[str, str]] = {
    "device": {"add": DEVICE_ADD, "fresh": DEVICE_FRESH, "del": DEVICE_DEL},
    "term": {"add": TERM_ADD, "fresh": TERM_FRESH, "del": TERM_DEL},
    "item": {"add": ITEM_ADD, "fresh": ITEM_FRESH, "del": ITEM_DEL},
    "term_item": {"add": TERM_ITEM_ADD, "fresh": TERM_ITEM_FRESH, "del": TERM_ITEM_DEL},
    "formula": {"add": FORMULA_ADD, "fresh": FORMULA_FRESH, "del": FORMULA_DEL},
    "gateway": {"add": GATEWAY_ADD, "fresh": GATEWAY_FRESH, "del": GATEWAY_DEL},
    "gateway_point": {
        "add": GATEWAY_POINT_ADD,
        "fresh": GATEWAY_POINT_FRESH,
        "del": GATEWAY_POINT_DEL,
    },
}

_CHANGE = (
    '{"entity", "op": "add"|"fresh"|"del", "id", "data" (the entity after), '
    '"old" (before; fresh and del), "cascade" (del: removed terms and term-items), '
    '"version" (STR:CONFIG_VERSION after the change), '
    '"history" (STR:CONFIG_HISTORY after the change)}'
)


def documentation() -> dict[str, Any]:
    """What ``GET /api/v1/redis_key`` serves: every key and channel with its meaning."""
    return {
        "str": {
            CONFIG_VERSION: "configuration version, incremented by every change",
            CTRL_DONE % "{request_id}": (
                "a device_ctrl's answer (or 'timeout'), set once by whoever audits it, "
                "kept a minute"
            ),
            CONFIG_HISTORY: (
                "<origin>:<stamp> of the last configuration change (origin: the TIME of "
                "the first change since the key was absent; stamp: the TIME of the change)"
            ),
        },
        "hash": {
            DEVICE % "{device_id}": "device; one JSON value per field",
            TERM % "{term_id}": "term (station behind a device); one JSON value per field",
            ITEM % "{item_id}": "item (what is measured); one JSON value per field",
            TERM_ITEM % ("{term_id}", "{item_id}"): "term-item (a point); JSON values",
            DEVICE_VALUES % "{device_id}": (
                "latest sample of each point, field {term_id}:{item_id}; flagged NT (not "
                "topical) while its device is offline or cannot run, until a fresh value"
            ),
            DEVICE_STATUS % "{device_id}": (
                "field 'status': JSON link state and counters of a running device, written "
                "on every state change and every 2 s; 'updated' is when the collector wrote it"
            ),
            ALARMS: "active alarms, field {device_id}:{term_id}:{item_id}:{kind}",
            PLUGIN_STATUS: "state of each processor plugin, field = plugin name",
            PLUGIN_RUNNING % "{plugin}": (
                "collectors running a plugin: field = collector instance, value = ISO time "
                "of its last report (every 10 s; removed when it stops)"
            ),
            FORMULA % "{formula_id}": (
                "formula: formula (expression), device_id/term_id/item_id (the result "
                "point), p1..pN (input points 'd:t:i'); one JSON value per field"
            ),
            FORMULA_STATUS: "state of each formula (last value or error), field = formula id",
            GATEWAY % "{gateway_id}": "northbound gateway (IEC 104 controlled station)",
            GATEWAY_STATUS: "state of each running gateway and its connections, field = id",
            GATEWAY_POINT % ("{gateway_id}", "{ioa}"): (
                "gateway point: IOA, monitor type, the point (device_id, term_id, item_id)"
            ),
        },
        "set": {
            DEVICES: "all device ids",
            TERMS: "all term ids",
            ITEMS: "all item ids",
            DEVICE_TERMS % "{device_id}": "term ids of a device",
            TERM_ITEMS % "{term_id}": "item ids linked to a term",
            ITEM_TERMS % "{item_id}": "term ids an item is linked to",
            FORMULAS: "all formula ids",
            FORMULA_PARAM % "{device_id}:{term_id}:{item_id}": "ids of the formulas using a point",
            GATEWAYS: "all gateway ids",
            GATEWAY_POINTS % "{gateway_id}": "IOAs of a gateway's points",
        },
        "list": {
            FRAME_LOG % "{device_id}": "bounded log of raw frames: {iso_time},{send|recv},{hex}",
        },
        "stream": {
            POINT_DATA % ("{device_id}", "{term_id}", "{item_id}"): (
                "bounded sample history of a point (history_length plus at most "
                "trim_interval + 99 entries, store/history_trim.py); entry field 'sample' "
                "holds the JSON sample {value, quality, flags, source_time, receive_time}"
            ),
            CTRL_LOG: (
                "device_ctrl audit: fields time, request_id, client, token_id, device_id, "
                "term_id, item_id, value, select, outcome, status, message, cause"
            ),
            ALARM_LOG: "alarm events (raise and clear), bounded",
        },
        "channel": {
            DEVICE_ADD: "device created: " + _CHANGE,
            DEVICE_FRESH: "device changed: " + _CHANGE,
            DEVICE_DEL: "device deleted, with its terms and term-items: " + _CHANGE,
            TERM_ADD: "term created: " + _CHANGE,
            TERM_FRESH: "term changed (possibly moved to another device): " + _CHANGE,
            TERM_DEL: "term deleted, with its term-items: " + _CHANGE,
            ITEM_ADD: "item created: " + _CHANGE,
            ITEM_FRESH: "item changed: " + _CHANGE,
            ITEM_DEL: "item deleted, with its term-items: " + _CHANGE,
            TERM_ITEM_ADD: "term-item created: " + _CHANGE,
            TERM_ITEM_FRESH: "term-item changed: " + _CHANGE,
            TERM_ITEM_DEL: "term-item deleted: " + _CHANGE,
            DEVICE_CALL: (
                'read-now request: {"request_id", "device_id", "term_id", "item_id", '
                '"reply_to", "deadline"}; the collector running the device answers on '
                "reply_to"
            ),
            DEVICE_CTRL: (
                'command request: {"request_id", "device_id", "term_id", "item_id", '
                '"value", "select" (true, false, or null: the term-item\'s default), '
                '"reply_to", "deadline", "client", "token_id"}; the collector running the '
                "device answers on reply_to"
            ),
            REPLY % ("{api_instance}", "{request_id}"): (
                'reply to one device_call/device_ctrl: {"request_id", "ok", "outcome": '
                '"confirmed"|"terminated"|"negative"|"busy"|"refused"|"not_found"|"offline"|'
                '"timeout"|"failed", "message", "cause" (the device\'s reason), "sample"}'
            ),
            DEVICE_SAMPLES % "{device_id}": (
                "every sample of a device, in the order stored, in batches: each ingest "
                "script call (up to 250 samples of one or more frames or scans) sends the "
                "device's samples in messages of at most 40, "
                '{"device_id", "samples": [{"device_id", "term_id", "item_id", "id" (its '
                'entry id in XS:DATA), "value", "quality", "flags", "source_time", '
                '"receive_time"}, ...]}; when the device goes offline or cannot run, the '
                'latest sample of each of its points again, without "id" (no new entry), '
                'with "NT" added to its flags and "good" quality made "questionable"'
            ),
            DEVICE_STATUS_CHANNEL % "{device_id}": (
                "a device's status on every write (state changes within 1 s, and every 2 s): "
                'the JSON status object, as in HS:DEVICE_STATUS {"device_id", "state", '
                '"link_state", "since", "updated", "last_error", "counters", ...}'
            ),
            FORMULA_ADD: "formula created: " + _CHANGE,
            FORMULA_FRESH: "formula changed: " + _CHANGE,
            FORMULA_DEL: "formula deleted: " + _CHANGE,
            GATEWAY_ADD: "gateway created: " + _CHANGE,
            GATEWAY_FRESH: "gateway changed: " + _CHANGE,
            GATEWAY_DEL: "gateway deleted, with its points: " + _CHANGE,
            GATEWAY_POINT_ADD: "gateway point created: " + _CHANGE,
            GATEWAY_POINT_FRESH: "gateway point changed: " + _CHANGE,
            GATEWAY_POINT_DEL: "gateway point deleted: " + _CHANGE,
            ALARM: (
                'alarm raised or cleared: {"event": "raise"|"clear", "device_id", "term_id", '
                '"item_id", "kind", "value", "limit", "time", "message", "id" (its entry id in '
                "XS:ALARM_LOG)}"
            ),
            DEVICE_DATA % ("{device_id}", "{term_id}", "{item_id}"): (
                "only with [collector] publish_points = true (one more PUBLISH per sample; "
                "CHANNEL:DEVICE_SAMPLES has every sample anyway): "
                'a new sample of a point: {"device_id", "term_id", "item_id", "id" (its '
                'entry id in XS:DATA), "value", "quality", "flags", "source_time", '
                '"receive_time"}; when its device goes offline or cannot run, its latest '
                'sample again (without "id") with "NT" (not topical) added to its flags and '
                '"good" quality made "questionable"'
            ),
        },
    }


def lua_templates() -> dict[str, str]:
    """The key and channel templates the configuration scripts need."""
    return {
        "device": DEVICE,
        "devices": DEVICES,
        "term": TERM,
        "terms": TERMS,
        "device_terms": DEVICE_TERMS,
        "item": ITEM,
        "items": ITEMS,
        "term_item": TERM_ITEM,
        "term_items": TERM_ITEMS,
        "item_terms": ITEM_TERMS,
        "config_version": CONFIG_VERSION,
        "config_history": CONFIG_HISTORY,
        "point_data": POINT_DATA,
        "device_values": DEVICE_VALUES,
        "device_status": DEVICE_STATUS,
        "frame_log": FRAME_LOG,
        "formula": FORMULA,
        "formulas": FORMULAS,
        "formula_param": FORMULA_PARAM,
        "formula_status": FORMULA_STATUS,
        "gateway": GATEWAY,
        "gateways": GATEWAYS,
        "gateway_point": GATEWAY_POINT,
        "gateway_points": GATEWAY_POINTS,
    }


# --- i14: cluster (issue 14: membership, device leases) ---
#: A collector's heartbeat (JSON), with a TTL: the collector is alive while it exists.
COLLECTOR = "STR:COLLECTOR:%s"
#: Every collector that has sent a heartbeat, field id -> its last heartbeat (JSON); the
#: listing script drops those whose COLLECTOR key has expired.
COLLECTORS = "HS:COLLECTOR"
#: A device's lease, "EPOCH COLLECTOR_ID", with a TTL (PX): who may run the device now.
LEASE = "STR:LEASE:%s"
#: A device's fencing epoch counter (INCR at every acquisition; never deleted, so an
#: epoch is never handed out twice, even across a device's removal and re-creation).
LEASE_EPOCH = "STR:LEASE_EPOCH:%s"
