"""Python emulations of PyDataColl's Lua scripts, for `MemoryRedis` (by SHA1).

Each mirrors one ``pydatacoll/store/*.lua`` script command for command; the store
contract tests (tests/store, run again against a real redis-server in
tests/integration) are what keep each emulation equal to its script.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydatacoll.testing.memory import MemoryRedis


# -- the scripts, emulated -----------------------------------------------------------------

_STORED = re.compile(r'^(.*),"quality":"([A-Za-z]+)","flags":\[(.*?)\],(.*)$', re.DOTALL)


def _status_script(store: MemoryRedis, keys: Any, args: list[str]) -> int:
    """store/status.lua: HSET each status and PUBLISH it."""
    for i in range(2, len(args), 2):
        store._hset(args[0] % args[i], "status", args[i + 1])
        store._publish(args[1] % args[i], args[i + 1])
    return (len(args) - 2) // 2


def _ingest_script(store: MemoryRedis, keys: Any, args: list[str]) -> list[int]:
    """store/ingest.lua: latest values, bounded history, publications, NT marks."""
    t = json.loads(args[0])
    maxlen, settled = int(args[1]), args[2]
    per_message, per_point, unsettled = int(args[3]), args[4] == "1", set(args[5].split())
    check = settled == "" or store._get(t["config_version"]) != settled
    written = skipped = fenced = 0

    def publish(device: str, messages: list[str]) -> None:
        """The device's messages, at most per_message samples each."""
        for k in range(0, len(messages), per_message):
            body = ",".join(messages[k : k + per_message])
            store._publish(
                t["device_samples"] % device,
                '{"device_id":"' + device + '","samples":[' + body + "]}",
            )

    i = 6
    while i < len(args):
        device, token, n, trims = args[i], args[i + 1], int(args[i + 2]), args[i + 3]
        i += 4
        trim = {int(number) for number in trims.split()}
        if token != "" and not lease_is_current(store, t["lease"] % device, token):
            if n > 0:
                fenced += n
                i += 3 * n
            continue
        prefix = '{"device_id":"' + device + '","term_id":"'
        values = t["device_values"] % device
        if n < 0:
            messages = []
            for point, sample in sorted(store._hgetall(values).items()):
                match = _STORED.match(sample)
                if match is None or '"NT"' in match.group(3):
                    continue
                head, quality, flags, tail = match.groups()
                quality = "questionable" if quality == "good" else quality
                flags = flags + ',"NT"' if flags else '"NT"'
                text = f'{head},"quality":"{quality}","flags":[{flags}],{tail}'
                store._hset(values, point, text)
                term, _, item = point.partition(":")
                message = prefix + term + '","item_id":"' + item + '",' + text[1:]
                if per_point:
                    store._publish(t["device_data"] % (device, term, item), message)
                messages.append(message)
            publish(device, messages)
            continue
        check_owner = check or device in unsettled
        messages = []
        for number in range(1, n + 1):
            field, ids, sample = args[i], args[i + 1], args[i + 2]
            i += 3
            if check_owner:
                owner = store._hget(t["term_item_head"] + field, "device_id")
                if owner != json.dumps(device):
                    skipped += 1
                    continue
            store._hset(values, field, sample)
            key = t["point_data_head"] % device + field
            entry_id = store._xadd(key, {"sample": sample})
            if number in trim:  # XTRIM MAXLEN ~ (exactly, here)
                stream = store._typed(key, list)
                del stream[: max(0, len(stream) - maxlen)]
            message = f'{prefix}{ids}","id":"{entry_id}",{sample[1:]}'
            if per_point:
                store._publish(t["device_data_head"] % device + field, message)
            messages.append(message)
            written += 1
        publish(device, messages)
    return [written, skipped, fenced]


# -- i14: the cluster scripts (store/lease_*.lua, store/collector_*.lua), emulated ----------


def lease_is_current(store: MemoryRedis, lease_key: str, token: str) -> bool:
    """store/lease_guard.lua's lease_is_current, for the emulation of a guarded script."""
    return store.live_get(lease_key) == token


def _lease_acquire(store: MemoryRedis, keys: Any, args: list[str]) -> list[Any]:
    lease_key = args[0] % args[2]
    held = store.live_get(lease_key)
    if held is not None and held.split(" ", 1)[1] != args[3]:
        return [0, held]
    epoch = store._incr(args[1] % args[2])
    store.set_px(lease_key, f"{epoch} {args[3]}", int(args[4]))
    return [epoch, ""]


def _lease_renew(store: MemoryRedis, keys: Any, args: list[str]) -> int:
    lease_key = args[0] % args[1]
    if store.live_get(lease_key) == args[2]:
        store.set_px(lease_key, args[2], int(args[3]))
        return 1
    return 0


def _lease_release(store: MemoryRedis, keys: Any, args: list[str]) -> int:
    lease_key = args[0] % args[1]
    if store.live_get(lease_key) == args[2]:
        store.delete_px(lease_key)
        return 1
    return 0


def _lease_holders(store: MemoryRedis, keys: Any, args: list[str]) -> list[str]:
    return [store.live_get(args[0] % device) or "" for device in args[1:]]


def _lease_check(store: MemoryRedis, keys: Any, args: list[str]) -> int:
    return int(lease_is_current(store, args[0] % args[1], args[2]))


def _collector_heartbeat(store: MemoryRedis, keys: Any, args: list[str]) -> int:
    now_ms = store.now_ms()
    beat = f'{args[3]},"at_ms":{now_ms}}}'
    store.set_px(args[0] % args[2], beat, int(args[4]))
    store._hset(args[1], args[2], beat)
    return now_ms


def _collector_list(store: MemoryRedis, keys: Any, args: list[str]) -> list[Any]:
    reply: list[Any] = [store.now_ms()]
    for collector_id in list(store._hgetall(args[1])):
        beat = store.live_get(args[0] % collector_id)
        if beat is None:
            store._hdel(args[1], collector_id)
        else:
            reply.append(beat)
    return reply


def _collector_leave(store: MemoryRedis, keys: Any, args: list[str]) -> int:
    gone = store.delete_px(args[0] % args[2])
    store._hdel(args[1], args[2])
    return gone


def _reply(store: MemoryRedis, keys: Any, args: list[str]) -> int:
    """store/reply.lua: PUBLISH the answer only under the current lease."""
    if not lease_is_current(store, args[0], args[1]):
        return -1
    return int(store._publish(args[2], args[3]))


def _status_fenced(store: MemoryRedis, keys: Any, args: list[Any]) -> list[int]:
    """store/status_fenced.lua: statuses and frame logs under the current lease only."""
    status_key, channel, lease_key, log_key, keep = args[:5]
    written = fenced = 0
    i = 5
    while i < len(args):
        device, token, status, n = args[i], args[i + 1], args[i + 2], int(args[i + 3])
        i += 4
        if not lease_is_current(store, lease_key % device, token):
            fenced += 1
        else:
            if status != "":
                store._hset(status_key % device, "status", status)
                store._publish(channel % device, status)
                written += 1
            if n > 0:
                store._rpush(log_key % device, [str(a) for a in args[i : i + n]])
                store._ltrim(log_key % device, -int(keep), -1)
        i += n
    return [written, fenced]


def _formula_status_fenced(store: MemoryRedis, keys: Any, args: list[Any]) -> list[int]:
    """store/formula_status.lua: formula statuses under their result device's lease."""
    written = fenced = 0
    for i in range(2, len(args), 4):
        if lease_is_current(store, args[1] % args[i + 1], args[i + 2]):
            store._hset(args[0], args[i], args[i + 3])
            written += 1
        else:
            fenced += 1
    return [written, fenced]


def _formula_status_delete(store: MemoryRedis, keys: Any, args: list[Any]) -> int:
    """store/formula_status_del.lua: HDEL only while the formula is not in the set."""
    if args[2] in store._smembers(args[1]):
        return 0
    return store._hdel(args[0], [args[2]])


def _ctrl_request(store: MemoryRedis, keys: Any, args: list[str]) -> list[Any]:
    """store/ctrl_request.lua: the point's lookups, then PUBLISH the request."""
    device_key, term_key, item_key, term_item_key, device_id, channel, message = args
    for key, field in ((device_key, "device_id"), (term_key, "term_id"), (item_key, "item_id")):
        if not store._exists(key):
            return [1, field]
    owner = store._hget(term_item_key, "device_id")
    try:
        decoded = json.loads(owner if owner is not None else "null")
    except ValueError:
        decoded = None
    if decoded != device_id:
        return [1, "term_item"]
    return [0, int(store._publish(channel, message))]


def _ctrl_answer(store: MemoryRedis, keys: Any, args: list[str]) -> int:
    """store/ctrl_answer.lua: the answer with its audit entry, once, under the lease."""
    lease, token, channel, text, done, ttl, log, maxlen = args[:8]
    if lease != "" and not lease_is_current(store, lease, token):
        return -1
    if store.live_get(done) is None:
        store.set_px(done, text, int(ttl))
        fields = args[8:]
        store._xadd(log, dict(zip(fields[::2], fields[1::2], strict=True)), int(maxlen))
    return int(store._publish(channel, text))


def _ctrl_settle(store: MemoryRedis, keys: Any, args: list[str]) -> Any:
    """store/ctrl_settle.lua: settle a timed-out device_ctrl, or the answer that won."""
    done, ttl = args
    if store.live_get(done) is None:
        store.set_px(done, "timeout", int(ttl))
        return 0
    return store.live_get(done)


def _cluster_scripts() -> dict[str, Callable[[MemoryRedis, Any, list[Any]], Any]]:
    from pydatacoll.store import cluster, commands, devices, processing

    return {
        cluster.ACQUIRE.sha: _lease_acquire,
        cluster.RENEW.sha: _lease_renew,
        cluster.RELEASE.sha: _lease_release,
        cluster.HOLDERS.sha: _lease_holders,
        cluster.CHECK.sha: _lease_check,
        cluster.HEARTBEAT.sha: _collector_heartbeat,
        cluster.LIST.sha: _collector_list,
        cluster.LEAVE.sha: _collector_leave,
        devices.REPLY.sha: _reply,
        devices.STATUS_FENCED.sha: _status_fenced,
        processing.FORMULA_STATUS_FENCED.sha: _formula_status_fenced,
        processing.FORMULA_STATUS_DELETE.sha: _formula_status_delete,
        commands.REQUEST.sha: _ctrl_request,
        commands.SETTLE.sha: _ctrl_settle,
        devices.CTRL_ANSWER.sha: _ctrl_answer,
    }


# --- i12dev: store/device_config.lua ---


def _device_config_script(store: MemoryRedis, keys: Any, args: list[str]) -> str | None:
    """store/device_config.lua: a device, its terms and term-items as one JSON text."""
    device_key, device_terms, term_key, term_items, term_item, device_id = args[:6]
    device = dict(store._hgetall(device_key % device_id))
    if not device:
        return None
    terms: dict[str, Any] = {}
    for term_id in store._smembers(device_terms % device_id):
        term = dict(store._hgetall(term_key % term_id))
        if term:
            points: dict[str, Any] = {}
            for item_id in store._smembers(term_items % term_id):
                fields = dict(store._hgetall(term_item % (term_id, item_id)))
                if fields:
                    points[item_id] = fields
            terms[term_id] = {"fields": term, "points": points}
    return json.dumps({"device": device, "terms": terms})


# --- scale: store/members.lua ---


def _members_script(store: MemoryRedis, keys: Any, args: list[str]) -> str:
    """store/members.lua: a set's members as one JSON array text."""
    return json.dumps(sorted(store._smembers(args[0])))


def scripts() -> dict[str, Callable[[MemoryRedis, Any, list[Any]], Any]]:
    from pydatacoll.store import config, devices, ingest_script, snapshot, status
    from pydatacoll.testing.memory_config import config_dump_script, config_script

    return {
        ingest_script._SHA: _ingest_script,
        status._SHA: _status_script,
        devices.DEVICE_CONFIG_SHA: _device_config_script,
        config.MEMBERS_SHA: _members_script,
        hashlib.sha1(config._SCRIPT.encode()).hexdigest(): config_script,
        hashlib.sha1(snapshot._SCRIPT.encode()).hexdigest(): config_dump_script,
        **_cluster_scripts(),
        **_processing_scripts(),
    }


# -- i12proc: the processors' stream ids and scripts --------------------------------------


def _alarm_event_script(store: MemoryRedis, keys: Any, args: list[str]) -> int:
    """store/alarm_event.lua: log the event, set or clear the active alarm, publish it."""
    log_key, active_key = keys
    maxlen, text, event, field, channel = args
    entry_id = store._xadd(log_key, {"event": text}, int(maxlen))
    if event == "raise":
        store._hset(active_key, field, text)
    else:
        store._hdel(active_key, [field])
    store._publish(channel, text[:-1] + ',"id":"' + entry_id + '"}')
    return 1


def _alarm_event_fenced(store: MemoryRedis, keys: Any, args: list[str]) -> int:
    """store/alarm_fence.lua then alarm_event.lua: only under the current lease, and only
    while the device is configured."""
    if not lease_is_current(store, args[5], args[6]) or args[8] not in store._smembers(args[7]):
        return 0
    return _alarm_event_script(store, keys, args[:5])


def _alarm_orphan(store: MemoryRedis, keys: Any, args: list[str]) -> int:
    """store/alarm_orphan.lua then alarm_event.lua: a deleted device's alarm, cleared once."""
    if args[6] in store._smembers(args[5]) or args[3] not in store._hgetall(keys[1]):
        return 0
    return _alarm_event_script(store, keys, args[:5])


def _processing_scripts() -> dict[str, Callable[[MemoryRedis, Any, list[Any]], Any]]:
    from pydatacoll.store import alarms

    return {
        alarms.SHA: _alarm_event_script,
        alarms.FENCED.sha: _alarm_event_fenced,
        alarms.ORPHAN.sha: _alarm_orphan,
    }
