-- Store a batch of samples: latest values, bounded history, publications; one round trip.
-- ARGV: templates (JSON), maxlen, settled configuration version ("" = unknown), then per
-- device: device_id, n, and n times term_id, item_id, sample JSON.
-- Ids are [A-Za-z0-9_.-] (checked by the model), so they go into JSON text as they are.
-- While the collector's configuration is settled at the stored version, every sample's
-- point is known to be on its device; otherwise each point's owner is checked, and a
-- sample of a point deleted or moved meanwhile is skipped (no orphan data).
local t = cjson.decode(ARGV[1])
local maxlen = ARGV[2]
local check = ARGV[3] == "" or redis.call("GET", t.config_version) ~= ARGV[3]
local written, skipped = 0, 0
local i = 4
while i <= #ARGV do
  local device, n = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
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
return {written, skipped}
