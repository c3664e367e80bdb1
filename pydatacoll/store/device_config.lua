-- One device with its terms and term-items, in one round trip (pydatacoll/store/devices.py).
-- ARGV: the key templates device, device_terms, term, term_items, term_item; the device id.
-- Reply: nil when the device is not stored, else one JSON text
-- {"device": {field: value}, "terms": {term_id: {"fields": {...}, "points": {item_id:
-- {field: value}}}}}; terms and term-items without fields are left out. One bulk string,
-- not nested arrays: a client parses it at once (json.loads), not element by element.
local function object(flat)
  local o = {}
  for i = 1, #flat, 2 do
    o[flat[i]] = flat[i + 1]
  end
  return o
end
local device = redis.call("HGETALL", string.format(ARGV[1], ARGV[6]))
if #device == 0 then
  return false
end
local terms = {}
for _, term_id in ipairs(redis.call("SMEMBERS", string.format(ARGV[2], ARGV[6]))) do
  local term = redis.call("HGETALL", string.format(ARGV[3], term_id))
  if #term > 0 then
    local points = {}
    for _, item_id in ipairs(redis.call("SMEMBERS", string.format(ARGV[4], term_id))) do
      local fields = redis.call("HGETALL", string.format(ARGV[5], term_id, item_id))
      if #fields > 0 then
        points[item_id] = object(fields)
      end
    end
    terms[term_id] = {fields = object(term), points = points}
  end
end
return cjson.encode({device = object(device), terms = terms})
