// PyDataColl status page: reads the REST API and the live stream; no library, no build.
//
// Live values come from GET /api/v1/stream (Server-Sent Events) when the daemon serves
// it, read with fetch() so that the Authorization header can be sent (EventSource cannot
// send headers); otherwise the page polls the device's values and statuses every 2 s.
// Every text from the API goes into the page with textContent, never as HTML.
"use strict";

(function () {
  const TOKEN_KEY = "pydatacoll.token";
  const POLL_MS = 2000;
  const SLOW_MS = 5000;
  const STATUS_BATCH = 25; // device statuses read per poll (round robin)
  const ITEM_NAMES_MAX = 500; // item names looked up for one device's points
  const STREAM_RETRY_MAX_MS = 30000;
  const HISTORY_LIMIT = 50;

  const state = {
    devices: new Map(), // id -> {config, status, row}
    order: [],
    selected: null,
    points: new Map(), // "term:item" -> {term, item, row, cells}
    items: new Map(), // item id -> item JSON
    mode: "starting",
    streamAvailable: null,
    stream: null, // AbortController of the running stream
    streamDevice: null,
    lastEventId: null,
    statusCursor: 0,
    busy: false,
  };

  const $ = (id) => document.getElementById(id);

  // -- helpers ----------------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === undefined || value === null) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) {
        node.append(child instanceof Node ? child : String(child));
      }
    }
    return node;
  }

  function badge(text, kind) {
    const safe = String(text || "unknown");
    return el("span", { class: `badge ${kind}-${safe.replace(/[^a-z_-]/gi, "")}`, text: safe });
  }

  function naturalCompare(a, b) {
    return String(a).localeCompare(String(b), undefined, { numeric: true });
  }

  function age(iso) {
    if (!iso) return "";
    const seconds = (Date.now() - Date.parse(iso)) / 1000;
    if (!isFinite(seconds)) return "";
    if (seconds < 1) return "now";
    if (seconds < 90) return `${Math.round(seconds)} s ago`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 172800) return `${Math.round(seconds / 3600)} h ago`;
    return `${Math.round(seconds / 86400)} d ago`;
  }

  function shortTime(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    return isNaN(date) ? String(iso) : date.toLocaleString();
  }

  function formatValue(value) {
    if (typeof value === "number") {
      return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(8)));
    }
    if (value === null || value === undefined) return "";
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  // The numbers of a (nested) counters object, as "name value" pairs: at most
  // COUNTERS_SHOWN of them in the cell, every one in its tooltip.
  const COUNTERS_SHOWN = 8;
  const COUNTERS_SKIPPED = new Set(["device_id", "points", "state", "last_error"]);

  function counterPairs(object, prefix, pairs) {
    for (const [name, value] of Object.entries(object || {})) {
      if (COUNTERS_SKIPPED.has(name) || name.endsWith("_time")) continue;
      if (value && typeof value === "object" && !Array.isArray(value)) {
        counterPairs(value, `${prefix}${name}.`, pairs);
      } else if (typeof value === "number") {
        const text = name.startsWith("rtt") ? `${(value * 1000).toFixed(1)} ms` : formatValue(value);
        pairs.push(`${name} ${text}`);
      }
    }
    return pairs;
  }

  function countersCell(object) {
    const pairs = counterPairs(object, "", []);
    const shown = pairs.slice(0, COUNTERS_SHOWN).join(", ") + (pairs.length > COUNTERS_SHOWN ? ", …" : "");
    return el("td", { class: "wrap counters", title: pairs.join("\n") }, shown);
  }

  function ageCell(iso) {
    const cell = el("td", { "data-time": iso || "", title: iso || "" }, age(iso));
    return cell;
  }

  function flash(node) {
    node.classList.remove("flash");
    void node.offsetWidth; // restart the animation
    node.classList.add("flash");
  }

  function showError(message) {
    $("error-line").textContent = message || "";
  }

  function setMode(mode, text) {
    state.mode = mode;
    const live = $("live");
    live.dataset.mode = mode;
    live.textContent = text;
  }

  // -- the API ------------------------------------------------------------------------

  class Unauthorized extends Error {}

  function headers(extra) {
    const all = Object.assign({ Accept: "application/json" }, extra || {});
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) all.Authorization = `Bearer ${token}`;
    return all;
  }

  async function api(path) {
    const response = await fetch(path, { headers: headers(), cache: "no-store" });
    if (response.status === 401) {
      askToken(sessionStorage.getItem(TOKEN_KEY) ? "the token was refused" : "");
      throw new Unauthorized("token required");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    if (!response.ok) {
      const message = body && body.message ? body.message : response.statusText;
      const failure = new Error(`${path}: ${response.status} ${message}`);
      failure.status = response.status;
      throw failure;
    }
    return body;
  }

  function askToken(message) {
    setMode("token", "token needed");
    $("token-form").hidden = false;
    $("token-message").textContent = message || "";
    $("token-input").focus();
  }

  function bindToken() {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
      $("token-input").value = "";
      $("token-form").hidden = true;
      $("forget-token").hidden = false;
      restart();
    });
    $("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
    $("forget-token").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      $("forget-token").hidden = true;
      stopStream();
      askToken("");
    });
  }

  // -- devices --------------------------------------------------------------------------

  async function refreshDevices() {
    const ids = await api("/api/v1/devices");
    const known = new Set(ids);
    for (const id of [...state.devices.keys()]) {
      if (!known.has(id)) {
        state.devices.get(id).row.remove();
        state.devices.delete(id);
      }
    }
    for (const id of ids) {
      if (!state.devices.has(id)) {
        const device = { id, config: {}, status: {}, row: deviceRow(id) };
        state.devices.set(id, device);
        try {
          device.config = await api(`/api/v1/devices/${encodeURIComponent(id)}`);
          device.status = await api(`/api/v1/devices/${encodeURIComponent(id)}/status`);
        } catch (error) {
          if (error instanceof Unauthorized) throw error;
        }
        renderDevice(device);
      }
    }
    state.order = ids.slice().sort(naturalCompare);
    const body = $("devices").tBodies[0];
    for (const id of state.order) body.append(state.devices.get(id).row);
    $("devices-count").textContent = `(${ids.length})`;
    if (state.selected === null || !state.devices.has(state.selected)) {
      const wanted = new URLSearchParams(location.hash.slice(1)).get("device");
      const first = wanted && state.devices.has(wanted) ? wanted : state.order[0];
      if (first !== undefined) await select(first);
    }
  }

  function deviceRow(id) {
    const row = el("tr", { tabindex: "0", "data-device": id, "aria-selected": "false" });
    row.addEventListener("click", () => select(id));
    row.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        select(id);
      }
    });
    return row;
  }

  function renderDevice(device) {
    const config = device.config || {};
    const status = device.status || {};
    const name = config.name ? `${device.id} · ${config.name}` : device.id;
    const cells = [
      el("td", {}, name),
      el("td", {}, config.protocol || status.protocol || ""),
      el("td", { class: "link" }, badge(status.state, "state")),
      ageCell(status.since),
      el("td", {}, status.collector || ""),
      ageCell(status.last_value_time),
      el("td", { class: "num" }, formatValue(status.points_updated)),
      countersCell(status.counters),
      el("td", { class: "wrap error" }, status.last_error || ""),
    ];
    cells[5].classList.add("last-value");
    device.row.replaceChildren(...cells);
    device.row.setAttribute("aria-selected", String(device.id === state.selected));
    device.row.dataset.state = status.state || "unknown";
  }

  function applyStatus(status) {
    const device = state.devices.get(String(status.device_id));
    if (!device) return;
    const changed = (device.status || {}).state !== status.state;
    device.status = Object.assign({}, device.status, status);
    renderDevice(device);
    if (changed) flash(device.row.cells[2]);
  }

  async function pollStatuses() {
    const ids = state.order;
    if (!ids.length) return;
    const batch = [];
    const count = Math.min(STATUS_BATCH, ids.length);
    for (let n = 0; n < count; n++) {
      batch.push(ids[(state.statusCursor + n) % ids.length]);
    }
    state.statusCursor = (state.statusCursor + count) % ids.length;
    if (state.selected !== null && !batch.includes(state.selected)) batch.push(state.selected);
    await Promise.all(
      batch.map(async (id) => {
        try {
          applyStatus(await api(`/api/v1/devices/${encodeURIComponent(id)}/status`));
        } catch (error) {
          if (error instanceof Unauthorized) throw error;
          if (error.status !== 404) throw error; // a device deleted since: next refresh
        }
      })
    );
  }

  // -- points of the selected device ------------------------------------------------

  async function select(id) {
    state.selected = id;
    history.replaceState(null, "", `#device=${encodeURIComponent(id)}`);
    for (const device of state.devices.values()) {
      device.row.setAttribute("aria-selected", String(device.id === id));
    }
    $("points-device").textContent = id;
    state.points.clear();
    $("points").tBodies[0].replaceChildren();
    await loadPoints(id);
    if (state.streamAvailable) startStream();
  }

  async function loadPoints(id) {
    const path = `/api/v1/devices/${encodeURIComponent(id)}`;
    const terms = await api(`${path}/terms`);
    const pairs = [];
    for (const term of terms) {
      const items = await api(`/api/v1/terms/${encodeURIComponent(term)}/items`);
      for (const item of items) pairs.push([term, item]);
    }
    if (state.selected !== id) return;
    const missing = [...new Set(pairs.map((pair) => pair[1]))]
      .filter((item) => !state.items.has(item))
      .slice(0, ITEM_NAMES_MAX);
    await Promise.all(
      missing.map(async (item) => {
        try {
          state.items.set(item, await api(`/api/v1/items/${encodeURIComponent(item)}`));
        } catch (error) {
          if (error instanceof Unauthorized) throw error;
        }
      })
    );
    if (state.selected !== id) return;
    const body = $("points").tBodies[0];
    for (const [term, item] of pairs) {
      const key = `${term}:${item}`;
      const meta = state.items.get(item) || {};
      const cells = {
        value: el("td", { class: "num value" }),
        quality: el("td", { class: "quality" }),
        flags: el("td", { class: "flags" }),
        source: el("td", {}),
        received: el("td", { class: "received" }),
      };
      const row = el(
        "tr",
        { "data-point": key },
        el("td", {}, term),
        el("td", {}, item),
        el("td", {}, meta.name || ""),
        cells.value,
        el("td", {}, meta.unit || ""),
        cells.quality,
        cells.flags,
        cells.source,
        cells.received
      );
      state.points.set(key, { term, item, row, cells, sample: null });
      body.append(row);
    }
    $("points-count").textContent = `(${pairs.length})`;
    filterPoints();
    await pollValues();
  }

  function applySample(key, sample) {
    const point = state.points.get(key);
    if (!point || !sample) return;
    const before = point.sample;
    point.sample = sample;
    const text = formatValue(sample.value);
    if (point.cells.value.textContent !== text) {
      point.cells.value.textContent = text;
      if (before) flash(point.cells.value);
    }
    point.cells.quality.replaceChildren(badge(sample.quality || "good", "quality"));
    point.cells.flags.textContent = (sample.flags || []).join(" ");
    if ("source_time" in sample) {
      // stream samples carry one "time" (source, else receive): keep what /values said
      point.cells.source.textContent = shortTime(sample.source_time);
    }
    point.cells.received.dataset.time = sample.receive_time || sample.time || "";
    point.cells.received.title = point.cells.received.dataset.time;
    point.cells.received.textContent = age(point.cells.received.dataset.time);
  }

  async function pollValues() {
    const id = state.selected;
    if (id === null) return;
    const values = await api(`/api/v1/devices/${encodeURIComponent(id)}/values`);
    if (state.selected !== id) return;
    for (const [key, sample] of Object.entries(values || {})) applySample(key, sample);
  }

  function filterPoints() {
    const needle = $("points-filter").value.trim().toLowerCase();
    for (const point of state.points.values()) {
      point.row.hidden = needle !== "" && !point.row.textContent.toLowerCase().includes(needle);
    }
  }

  // -- alarms, plugins, command log -----------------------------------------------------

  function pointName(body) {
    return `${body.device_id}:${body.term_id}:${body.item_id}`;
  }

  async function refreshAlarms() {
    const active = await api("/api/v1/alarms");
    $("alarms-count").textContent = `(${active.length})`;
    $("alarms").tBodies[0].replaceChildren(
      ...active.map((alarm) =>
        el(
          "tr",
          {},
          el("td", {}, pointName(alarm)),
          el("td", {}, badge(alarm.kind, "event")),
          el("td", { class: "num" }, formatValue(alarm.value)),
          el("td", { class: "num" }, formatValue(alarm.limit)),
          ageCell(alarm.time),
          el("td", { class: "wrap" }, alarm.message || "")
        )
      )
    );
    const events = await api(`/api/v1/alarms/history?limit=${HISTORY_LIMIT}`);
    $("alarm-history").tBodies[0].replaceChildren(
      ...events.map((event) =>
        el(
          "tr",
          {},
          el("td", { title: event.time || "" }, shortTime(event.time)),
          el("td", {}, badge(event.event, "event")),
          el("td", {}, pointName(event)),
          el("td", {}, event.kind || ""),
          el("td", { class: "num" }, formatValue(event.value)),
          el("td", { class: "wrap" }, event.message || "")
        )
      )
    );
  }

  async function refreshPlugins() {
    const plugins = await api("/api/v1/plugins");
    $("plugins").tBodies[0].replaceChildren(
      ...plugins.map((plugin) =>
        el(
          "tr",
          {},
          el("td", { title: plugin.description || "" }, plugin.name || ""),
          el("td", {}, plugin.enabled ? "yes" : "no"),
          el("td", {}, badge(plugin.state, "state")),
          countersCell(plugin.counters),
          el("td", { class: "wrap error" }, plugin.error || "")
        )
      )
    );
  }

  async function refreshAudit() {
    const entries = await api(`/api/v1/device_ctrl/log?limit=${HISTORY_LIMIT}`);
    $("audit").tBodies[0].replaceChildren(
      ...entries.map((entry) =>
        el(
          "tr",
          {},
          el("td", { title: entry.time || "" }, shortTime(entry.time)),
          el("td", { title: `token ${entry.token_id || "-"}` }, entry.client || ""),
          el("td", {}, pointName(entry)),
          el("td", { class: "num" }, formatValue(entry.value)),
          el("td", {}, badge(entry.outcome, "outcome")),
          el("td", { class: "wrap" }, entry.message || "")
        )
      )
    );
  }

  // -- the live stream (Server-Sent Events over fetch) -------------------------------

  async function probeStream() {
    // The OpenAPI document lists the routes: no request that answers 404 (and no
    // console error) on a daemon without the stream.
    const spec = await api("/api/v1/openapi.json");
    state.streamAvailable = Boolean(spec && spec.paths && spec.paths["/api/v1/stream"]);
  }

  function stopStream() {
    if (state.stream) state.stream.abort();
    state.stream = null;
  }

  function startStream() {
    stopStream();
    const controller = new AbortController();
    state.stream = controller;
    readStream(controller, 1000);
  }

  async function readStream(controller, retryMs) {
    const device = state.selected;
    const query = device === null ? "" : `?device_id=${encodeURIComponent(device)}`;
    const extra = { Accept: "text/event-stream" };
    if (state.lastEventId) extra["Last-Event-ID"] = state.lastEventId;
    try {
      const response = await fetch(`/api/v1/stream${query}`, {
        headers: headers(extra),
        cache: "no-store",
        signal: controller.signal,
      });
      if (response.status === 401) {
        askToken("the token was refused");
        return;
      }
      if (!response.ok || !response.body) throw new Error(`stream: ${response.status}`);
      setMode("stream", "live (stream)");
      retryMs = 1000;
      await consume(response.body, controller);
    } catch (error) {
      if (controller.signal.aborted) return;
      showError(`live stream interrupted (${error.message}); polling meanwhile`);
    }
    if (controller.signal.aborted) return;
    setMode("polling", `polling every ${POLL_MS / 1000} s`);
    setTimeout(() => {
      if (state.stream === controller) readStream(controller, Math.min(retryMs * 2, STREAM_RETRY_MAX_MS));
    }, retryMs);
  }

  async function consume(body, controller) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let event = { type: "message", data: [], id: null };
    while (!controller.signal.aborted) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (event.data.length) dispatch(event);
          event = { type: "message", data: [], id: null };
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let text = colon < 0 ? "" : line.slice(colon + 1);
          if (text.startsWith(" ")) text = text.slice(1);
          if (field === "event") event.type = text;
          else if (field === "data") event.data.push(text);
          else if (field === "id") state.lastEventId = event.id = text;
        }
      }
    }
  }

  function dispatch(event) {
    let body;
    try {
      body = JSON.parse(event.data.join("\n"));
    } catch (error) {
      return;
    }
    if (event.type === "sample") {
      if (String(body.device_id) === state.selected) {
        applySample(`${body.term_id}:${body.item_id}`, body);
      }
      const device = state.devices.get(String(body.device_id));
      if (device) {
        device.status.last_value_time = body.receive_time || body.time;
        device.row.cells[5].dataset.time = device.status.last_value_time || "";
      }
    } else if (event.type === "status") {
      applyStatus(body);
    } else if (event.type === "alarm") {
      refreshAlarms().catch(report);
    }
  }

  // -- loops ----------------------------------------------------------------------------

  function report(error) {
    if (error instanceof Unauthorized) return;
    setMode("offline", "no answer");
    showError(error.message || String(error));
  }

  async function fastTick() {
    if (state.busy || state.mode === "token") return;
    state.busy = true;
    try {
      await pollStatuses();
      if (state.mode !== "stream") await pollValues();
      if (state.mode === "offline") setMode("polling", `polling every ${POLL_MS / 1000} s`);
      if (state.mode !== "offline") showError("");
    } catch (error) {
      report(error);
    } finally {
      state.busy = false;
    }
  }

  async function slowTick() {
    if (state.mode === "token") return;
    try {
      await refreshDevices();
      await Promise.all([refreshAlarms(), refreshPlugins(), refreshAudit()]);
    } catch (error) {
      report(error);
    }
  }

  function tickAges() {
    $("clock").textContent = new Date().toLocaleTimeString();
    for (const cell of document.querySelectorAll("td[data-time]")) {
      const text = age(cell.dataset.time);
      if (cell.textContent !== text) cell.textContent = text;
      const seconds = (Date.now() - Date.parse(cell.dataset.time)) / 1000;
      cell.classList.toggle("stale", cell.dataset.time !== "" && seconds > 60);
    }
  }

  async function restart() {
    stopStream();
    showError("");
    setMode("starting", "starting");
    try {
      await probeStream();
      await refreshDevices();
      await Promise.all([refreshAlarms(), refreshPlugins(), refreshAudit()]);
      if (state.streamAvailable) startStream();
      else setMode("polling", `polling every ${POLL_MS / 1000} s`);
    } catch (error) {
      report(error);
    }
  }

  function main() {
    bindToken();
    $("points-filter").addEventListener("input", filterPoints);
    setInterval(fastTick, POLL_MS);
    setInterval(slowTick, SLOW_MS);
    setInterval(tickAges, 1000);
    tickAges();
    restart();
  }

  main();
})();
