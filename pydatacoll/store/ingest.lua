-- Store a batch of samples: latest values, bounded history, live publication; one round trip.
-- ARGV: templates (JSON), maxlen, settled configuration version ("" = unknown), samples
-- per device message, "1" to publish each sample on its point's channel too (else ""),
-- the ids of the unsettled devices (space separated), then per device: device_id, token,
-- n, trims, and n times field, ids, sample JSON; or device_id, token, -1, "": mark
-- the latest sample of each of the device's points not topical (it went offline), in the
-- order of the batch, so a value read before that never overwrites the mark.
-- field: "term_id:item_id", the point's field in the values hash (and the end of its
-- stream's and channel's key); ids: term_id .. '","item_id":"' .. item_id, the point's
-- part of its message (both made once per point by the collector: no Lua string per
-- sample for them).
-- trims: the numbers (1 to n, space separated) of the samples after which their point's
-- history is trimmed, XTRIM MAXLEN ~ maxlen. The collector asks for it every few samples of
-- a point, not at every XADD (store/ingest.py: the bound this keeps).
-- Ids are [A-Za-z0-9_.-] (checked by the model), so they go into JSON text as they are.
-- While the collector's configuration is settled at the stored version, every sample's
-- point is known to be on its device, except on an unsettled device (a change touched
-- it and the collector has not applied it yet); otherwise each point's owner is checked
-- (one HGET), and a sample of a point deleted or moved meanwhile is skipped (no orphan
-- data).
-- token: "" (no cluster) or the writer's lease of the device, "EPOCH COLLECTOR_ID": a
-- segment whose lease is not current (lease_is_current, store/lease_guard.lua, put in
-- front of this script) is refused whole and its samples counted as fenced.
-- Cost: every Lua string is hashed whole when it is made (about 9 instructions a byte),
-- so each sample makes few: its stream key is one concatenation (string.format cost about
-- 3,200 instructions a sample more), the device message is assembled from pieces by one
-- table.concat per message of at most ARGV[4] samples (a few KB: one buffer), never by
-- concatenating messages.
local t = cjson.decode(ARGV[1])
local maxlen = ARGV[2]
local check = ARGV[3] == "" or redis.call("GET", t.config_version) ~= ARGV[3]
local per_message = tonumber(ARGV[4])
local per_point = ARGV[5] == "1"
local unsettled = {}
for device in string.gmatch(ARGV[6], "%S+") do unsettled[device] = true end
local written, skipped, fenced = 0, 0, 0
-- the per-sample loop's functions as locals: no global and field lookup per use
local call, sub = redis.call, string.sub

-- "NT" added to the flags and "good" made "questionable", in the stored text itself (no
-- decode/encode: cjson would round the value). Our encoder writes quality and flags
-- right after the value; the greedy head finds the last "quality", never one in a value.
local function mark_not_topical(device)
  local key = string.format(t.device_values, device)
  local fields = redis.call("HGETALL", key)
  local prefix = '{"device_id":"' .. device .. '","term_id":"'
  local channel = string.format(t.device_samples, device)
  local head = '{"device_id":"' .. device .. '","samples":['
  local marked, messages = {}, {}
  for k = 1, #fields, 2 do
    local point, sample = fields[k], fields[k + 1]
    local front, quality, flags, tail =
      string.match(sample, '^(.*),"quality":"(%a+)","flags":%[(.-)%],(.*)$')
    if front and not string.find(flags, '"NT"', 1, true) then
      if quality == "good" then quality = "questionable" end
      if flags == "" then flags = '"NT"' else flags = flags .. ',"NT"' end
      local text = front .. ',"quality":"' .. quality .. '","flags":[' .. flags .. '],' .. tail
      marked[#marked + 1] = point
      marked[#marked + 1] = text
      local term, item = string.match(point, "^([^:]*):(.*)$")
      local message = prefix .. term .. '","item_id":"' .. item .. '",' .. string.sub(text, 2)
      if per_point then
        redis.call("PUBLISH", string.format(t.device_data, device, term, item), message)
      end
      messages[#messages + 1] = message
      if #messages == per_message then
        redis.call("PUBLISH", channel, head .. table.concat(messages, ",") .. "]}")
        messages = {}
      end
    end
  end
  for k = 1, #marked, 1000 do
    redis.call("HSET", key, unpack(marked, k, math.min(k + 999, #marked)))
  end
  if #messages > 0 then
    redis.call("PUBLISH", channel, head .. table.concat(messages, ",") .. "]}")
  end
end

local i = 7
while i <= #ARGV do
  local device, token, n, trims = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  i = i + 4
  if token ~= "" and not lease_is_current(string.format(t.lease, device), token) then
    if n > 0 then
      fenced = fenced + n
      i = i + 3 * n
    end
    n = 0
  elseif n < 0 then
    mark_not_topical(device)
    n = 0
  end
  local check_owner = check or unsettled[device]
  local owner_text = '"' .. device .. '"'
  local prefix = '{"device_id":"' .. device .. '","term_id":"'
  local channel = string.format(t.device_samples, device)
  -- a point's stream, channel and owner: head .. field
  local data_head = string.format(t.point_data_head, device)
  local channel_head = string.format(t.device_data_head, device)
  -- a device message: 6 pieces per sample, the first opening the message or its element
  local first = '{"device_id":"' .. device .. '","samples":[' .. prefix
  local joiner = "," .. prefix
  local pieces = {}
  local used, in_message = 0, 0
  local latest, nl = {}, 0
  local trim = nil
  if trims ~= "" then
    trim = {}
    for number in string.gmatch(trims, "%d+") do trim[tonumber(number)] = true end
  end
  for number = 1, n do
    local field, ids, sample = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    i = i + 3
    if not check_owner
      or call("HGET", t.term_item_head .. field, "device_id") == owner_text
    then
      latest[nl + 1] = field
      latest[nl + 2] = sample
      nl = nl + 2
      local key = data_head .. field
      local id = call("XADD", key, "*", "sample", sample)
      if trim ~= nil and trim[number] then
        call("XTRIM", key, "MAXLEN", "~", maxlen)
      end
      local rest = sub(sample, 2)
      if per_point then
        call("PUBLISH", channel_head .. field,
          prefix .. ids .. '","id":"' .. id .. '",' .. rest)
      end
      if in_message == 0 then pieces[used + 1] = first else pieces[used + 1] = joiner end
      pieces[used + 2] = ids
      pieces[used + 3] = '","id":"'
      pieces[used + 4] = id
      pieces[used + 5] = '",'
      pieces[used + 6] = rest
      used = used + 6
      in_message = in_message + 1
      if in_message == per_message then
        pieces[used + 1] = "]}"
        call("PUBLISH", channel, table.concat(pieces, "", 1, used + 1))
        used, in_message = 0, 0
      end
      written = written + 1
    else
      skipped = skipped + 1
    end
  end
  if in_message > 0 then
    pieces[used + 1] = "]}"
    redis.call("PUBLISH", channel, table.concat(pieces, "", 1, used + 1))
  end
  if nl > 0 then
    local key = string.format(t.device_values, device)
    for k = 1, nl, 1000 do  -- unpack in chunks: Lua's C stack is limited
      redis.call("HSET", key, unpack(latest, k, math.min(k + 999, nl)))
    end
  end
end
return {written, skipped, fenced}
