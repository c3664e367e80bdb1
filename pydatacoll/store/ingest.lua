-- Store a batch of samples: latest values, bounded history, publications; one round trip.
-- ARGV: templates (JSON), maxlen, settled configuration version ("" = unknown), then per
-- device: device_id, token, n, and n times term_id, item_id, sample JSON; or device_id,
-- token, -1: mark
-- the latest sample of each of the device's points not topical (it went offline), in the
-- order of the batch, so a value read before that never overwrites the mark.
-- Ids are [A-Za-z0-9_.-] (checked by the model), so they go into JSON text as they are.
-- While the collector's configuration is settled at the stored version, every sample's
-- point is known to be on its device; otherwise each point's owner is checked, and a
-- sample of a point deleted or moved meanwhile is skipped (no orphan data).
-- token: "" (no cluster) or the writer's lease of the device, "EPOCH COLLECTOR_ID": a
-- segment whose lease is not current (lease_is_current, store/lease_guard.lua, put in
-- front of this script) is refused whole and its samples counted as fenced.
local t = cjson.decode(ARGV[1])
local maxlen = ARGV[2]
local check = ARGV[3] == "" or redis.call("GET", t.config_version) ~= ARGV[3]
local written, skipped, fenced = 0, 0, 0

-- "NT" added to the flags and "good" made "questionable", in the stored text itself (no
-- decode/encode: cjson would round the value). Our encoder writes quality and flags
-- right after the value; the greedy head finds the last "quality", never one in a value.
local function mark_not_topical(device)
  local key = string.format(t.device_values, device)
  local fields = redis.call("HGETALL", key)
  local prefix = '{"device_id":"' .. device .. '","term_id":"'
  local marked, messages = {}, {}
  for k = 1, #fields, 2 do
    local point, sample = fields[k], fields[k + 1]
    local head, quality, flags, tail =
      string.match(sample, '^(.*),"quality":"(%a+)","flags":%[(.-)%],(.*)$')
    if head and not string.find(flags, '"NT"', 1, true) then
      if quality == "good" then quality = "questionable" end
      if flags == "" then flags = '"NT"' else flags = flags .. ',"NT"' end
      local text = head .. ',"quality":"' .. quality .. '","flags":[' .. flags .. '],' .. tail
      marked[#marked + 1] = point
      marked[#marked + 1] = text
      local term, item = string.match(point, "^([^:]*):(.*)$")
      local message = prefix .. term .. '","item_id":"' .. item .. '",' .. string.sub(text, 2)
      redis.call("PUBLISH", string.format(t.device_data, device, term, item), message)
      messages[#messages + 1] = message
    end
  end
  for k = 1, #marked, 1000 do
    redis.call("HSET", key, unpack(marked, k, math.min(k + 999, #marked)))
  end
  if #messages > 0 then
    redis.call("PUBLISH", string.format(t.device_samples, device),
      '{"device_id":"' .. device .. '","samples":[' .. table.concat(messages, ",") .. "]}")
  end
end

local i = 4
while i <= #ARGV do
  local device, token, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
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
  local owner_text = '"' .. device .. '"'
  local prefix = '{"device_id":"' .. device .. '","term_id":"'
  local latest, messages = {}, {}
  for _ = 1, n do
    local term, item, sample = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    i = i + 3
    local ok = true
    if check then
      ok = redis.call("HGET", string.format(t.term_item, term, item), "device_id") == owner_text
    end
    if ok then
      latest[#latest + 1] = term .. ":" .. item
      latest[#latest + 1] = sample
      local id = redis.call("XADD", string.format(t.point_data, device, term, item),
        "MAXLEN", "~", maxlen, "*", "sample", sample)
      local message = prefix .. term .. '","item_id":"' .. item .. '","id":"' .. id .. '",'
        .. string.sub(sample, 2)
      redis.call("PUBLISH", string.format(t.device_data, device, term, item), message)
      messages[#messages + 1] = message
      written = written + 1
    else
      skipped = skipped + 1
    end
  end
  if #latest > 0 then
    local key = string.format(t.device_values, device)
    for k = 1, #latest, 1000 do  -- unpack in chunks: Lua's C stack is limited
      redis.call("HSET", key, unpack(latest, k, math.min(k + 999, #latest)))
    end
    redis.call("PUBLISH", string.format(t.device_samples, device),
      '{"device_id":"' .. device .. '","samples":[' .. table.concat(messages, ",") .. "]}")
  end
end
return {written, skipped, fenced}
