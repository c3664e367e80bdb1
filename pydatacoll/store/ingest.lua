-- Store a batch of samples: latest value, bounded history, publications; one round trip.
-- ARGV: templates (JSON), maxlen, then per sample: device_id, term_id, item_id,
-- sample JSON, message JSON. A sample of a point that is no longer configured on that
-- device (deleted or moved meanwhile) is skipped, so no orphan data is written.
local t = cjson.decode(ARGV[1])
local maxlen = ARGV[2]
local written, skipped = 0, 0
local per_device = {}
local order = {}
local i = 3
while i <= #ARGV do
  local device, term, item = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local sample, message = ARGV[i + 3], ARGV[i + 4]
  i = i + 5
  local owner = redis.call("HGET", string.format(t.term_item, term, item), "device_id")
  if owner and cjson.decode(owner) == device then
    redis.call("HSET", string.format(t.device_values, device), term .. ":" .. item, sample)
    redis.call("XADD", string.format(t.point_data, device, term, item),
      "MAXLEN", "~", maxlen, "*", "sample", sample)
    redis.call("PUBLISH", string.format(t.device_data, device, term, item), message)
    local list = per_device[device]
    if not list then
      list = {}
      per_device[device] = list
      order[#order + 1] = device
    end
    list[#list + 1] = message
    written = written + 1
  else
    skipped = skipped + 1
  end
end
for _, device in ipairs(order) do
  redis.call("PUBLISH", string.format(t.device_samples, device),
    '{"device_id":' .. cjson.encode(device) .. ',"samples":[' ..
    table.concat(per_device[device], ",") .. "]}")
end
return {written, skipped}
