"""``device_call`` / ``device_ctrl`` requests for the devices this collector runs.

A request for a device another collector runs is ignored (that one answers); one past
its deadline is dropped; past ``MAX_REQUESTS`` at once the answer is ``overloaded`` (503
with Retry-After), never a queue.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from pydatacoll import errors
from pydatacoll.model import OUTCOME_STATUS, ControlOutcome, Sample
from pydatacoll.store.commands import DONE_TTL_MS

from .base import ManagerBase, Running

#: Requests (device_call / device_ctrl) handled at once; more are answered "overloaded"
#: (503 with Retry-After), never queued.
MAX_REQUESTS = 256


class RequestHandler(ManagerBase):
    """The request part of the device manager."""

    _requests: int = 0

    def _request(self, kind: str, message: dict[str, Any]) -> None:
        reply_to = message.get("reply_to")
        device_id = message.get("device_id")
        if not isinstance(reply_to, str) or not isinstance(device_id, str):
            return
        running = self.running_devices.get(device_id)
        if running is None:
            return  # not ours: another collector may run it; the API times out otherwise
        deadline = message.get("deadline")
        if isinstance(deadline, (int, float)) and time.time() > deadline:
            self.log.warn(
                "device_{kind} {request_id} arrived after its deadline: dropped",
                kind=kind,
                request_id=message.get("request_id"),
            )
            return
        if self._requests >= MAX_REQUESTS:
            self._reply(
                message,
                ControlOutcome(
                    "overloaded", f"the collector already handles {MAX_REQUESTS} requests"
                ),
            )
            return
        self._requests += 1
        self._command_started(device_id)
        d = defer.maybeDeferred(self._run_request, kind, running, message)
        d.addErrback(lambda f: ControlOutcome("failed", f.getErrorMessage()))
        d.addCallback(lambda outcome: self._reply(message, outcome))
        d.addBoth(self._request_done, device_id)

    def _request_done(self, result: Any, device_id: str) -> None:
        self._requests -= 1
        self._command_done(device_id)
        if isinstance(result, Failure):
            self.log.failure("answering a request", result)

    def _command_started(self, device_id: str) -> None:
        """A request for ``device_id`` starts: its input reads (even while the ingest is
        congested) until its last request is answered, so its reply is not held back;
        the other devices' data is held meanwhile (`pydatacoll.control.priority`)."""
        self._commands[device_id] = self._commands.get(device_id, 0) + 1
        runtime = self._paused.pop(device_id, None)
        if runtime is not None and self._held.get(device_id) is not runtime:
            self._set_input(runtime, pause=False)  # (a held one reads as the hold frees it)
        self.priority.begin(device_id)

    def _command_done(self, device_id: str) -> None:
        self.priority.end(device_id)
        left = self._commands.get(device_id, 0) - 1
        if left > 0:
            self._commands[device_id] = left
            return
        self._commands.pop(device_id, None)
        if self.ingest.congested and any(s.device_id == device_id for s in self.ingest.buffer):
            self._pause(device_id)  # still flooding: paused again until the ingest catches up

    # --- commands ahead of data (the `DataHolder` of `pydatacoll.control.priority`) ---

    def hold_data(self, exempt: Collection[str]) -> None:
        """Hold back the devices that sent data lately and pause without loss (not those
        in ``exempt`` or with a request in flight), and the ingest's new scripts."""
        for device_id in self._senders | self._senders_before:
            running = self.running_devices.get(device_id)
            if (
                running is None
                or running.runtime is None
                or device_id in exempt
                or device_id in self._commands
                or device_id in self._held
                or not getattr(running.runtime, "lossless_pause", False)
            ):
                continue
            self._held[device_id] = running.runtime
            if self._paused.get(device_id) is not running.runtime:
                self._set_input(running.runtime, pause=True)
        self.ingest.hold(True)

    def release_device(self, device_id: str) -> None:
        """A command for a held device starts: it reads again now."""
        runtime = self._held.pop(device_id, None)
        if runtime is not None and self._paused.get(device_id) is not runtime:
            self._set_input(runtime, pause=False)

    def release_data(self) -> None:
        """The hold ends: every held device reads again (unless the ingest's congestion
        pauses it), and the ingest writes again."""
        held, self._held = self._held, {}
        for device_id, runtime in held.items():
            if self._paused.get(device_id) is not runtime:
                self._set_input(runtime, pause=False)
        self.ingest.hold(False)

    def _run_request(self, kind: str, running: Running, message: dict[str, Any]) -> Any:
        runtime = running.runtime
        term_id, item_id = str(message.get("term_id")), str(message.get("item_id"))
        if runtime is None:
            return ControlOutcome("offline", running.error or "the device is not running")
        if not any(
            (ti.term_id, ti.item_id) == (term_id, item_id) for ti in running.config.term_items
        ):
            return ControlOutcome("not_found", f"no point {term_id}:{item_id} on this device")
        if kind == "call":
            d = runtime.read_point(term_id, item_id)

            def got(sample: Sample) -> ControlOutcome:
                self.samples_received([sample])
                return ControlOutcome("confirmed", "read", sample=sample)

            def failed(failure: Failure) -> ControlOutcome:
                error = failure.value
                if isinstance(error, errors.DeviceError):
                    return ControlOutcome(error.outcome, error.message, error.cause)
                return ControlOutcome("failed", failure.getErrorMessage())

            return d.addCallbacks(got, failed)
        select = message.get("select")
        d = runtime.control_point(
            term_id, item_id, message.get("value"), select if isinstance(select, bool) else None
        )

        def done(outcome: ControlOutcome) -> ControlOutcome:
            # One line per command: the API's, when it runs in this process; else this one.
            if not self.settings.runs_api:
                self.log.info(
                    "device_ctrl {request_id} from {client} (token {token_id}): "
                    "{device_id}:{term_id}:{item_id} = {value!r}: {outcome} {message}",
                    request_id=message.get("request_id"),
                    client=message.get("client"),
                    token_id=message.get("token_id"),
                    device_id=running.config.device.id,
                    term_id=term_id,
                    item_id=item_id,
                    value=message.get("value"),
                    outcome=outcome.outcome,
                    message=outcome.message,
                )
            if outcome.sample is not None:
                self.samples_received([outcome.sample])
            return outcome

        return d.addCallback(done)

    def _reply(self, message: dict[str, Any], outcome: ControlOutcome) -> Any:
        body = {"request_id": message.get("request_id"), **outcome.to_json()}
        device_id = str(message.get("device_id"))
        # Cluster mode: answered only under the device's current lease (a lease lost
        # meanwhile: no answer, the API times out; never one for another's device).
        token = None if self.member is None else self.token_of(device_id)
        audit = _audit_entry(message, outcome)
        # The done key outlives the API's deadline by DONE_TTL_MS (the API settles a
        # timeout at its deadline, for as long); an answer later than that is not audited
        # here: the API has audited the timeout.
        deadline = message.get("deadline")
        done_ttl = DONE_TTL_MS
        if isinstance(deadline, (int, float)) and not isinstance(deadline, bool):
            done_ttl += int((deadline - time.time()) * 1000)
        if done_ttl <= 0:
            audit = None
        if audit is None:
            d = self.reply_store.publish_reply(
                message["reply_to"], body, *((device_id, token) if token is not None else ())
            )
        else:
            # A device_ctrl: its audit entry goes with the answer (one round trip).
            body["audited"] = True
            length = message.get("audit_length")
            d = self.reply_store.answer_ctrl(
                str(message.get("request_id")),
                message["reply_to"],
                body,
                audit,
                length if isinstance(length, int) and length > 0 else 10000,
                device_id,
                token,
                done_ttl,
            )
        if token is not None:

            def fenced(heard: Any) -> Any:
                if heard is not None and int(heard) < 0:
                    self.log.warn(
                        "answer to {request_id} refused: the lease of {device_id} is no "
                        "longer this collector's",
                        request_id=message.get("request_id"),
                        device_id=device_id,
                    )
                return heard

            d.addCallback(fenced)
        return d.addErrback(lambda f: self.log.warn("cannot reply: {e}", e=f.getErrorMessage()))


#: The audit entry's fields a device_ctrl request carries (``audit``), then the outcome's.
AUDIT_FIELDS = (
    "time",
    "request_id",
    "client",
    "token_id",
    "device_id",
    "term_id",
    "item_id",
    "value",
    "select",
)


def _audit_entry(message: dict[str, Any], outcome: ControlOutcome) -> dict[str, str] | None:
    """The audit entry of a device_ctrl answer, or None when the request asks for none
    (device_call, or an API that audits itself)."""
    audit = message.get("audit")
    if not isinstance(audit, dict):
        return None
    entry = {name: str(audit.get(name, ""))[:512] for name in AUDIT_FIELDS}
    entry.update(
        outcome=outcome.outcome,
        status=str(OUTCOME_STATUS.get(outcome.outcome, 500)),
        message=outcome.message[:500],
        cause=outcome.cause or "",
    )
    return entry
