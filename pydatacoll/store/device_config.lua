-- One device with its terms and term-items, in one round trip (pydatacoll/store/devices.py).
-- ARGV: the key templates device, device_terms, term, term_items, term_item; the device id.
-- Reply: {} when the device is not stored, else {device HGETALL, {term_id, term HGETALL,
-- {item_id, term-item HGETALL, ...}}, ...}; terms and term-items without fields are left out.
local device = redis.call("HGETALL", string.format(ARGV[1], ARGV[6]))
if #device == 0 then
  return {}
end
local reply = {device}
for _, term_id in ipairs(redis.call("SMEMBERS", string.format(ARGV[2], ARGV[6]))) do
  local term = redis.call("HGETALL", string.format(ARGV[3], term_id))
  if #term > 0 then
    local points = {}
    for _, item_id in ipairs(redis.call("SMEMBERS", string.format(ARGV[4], term_id))) do
      local fields = redis.call("HGETALL", string.format(ARGV[5], term_id, item_id))
      if #fields > 0 then
        points[#points + 1] = item_id
        points[#points + 1] = fields
      end
    end
    reply[#reply + 1] = {term_id, term, points}
  end
end
return reply
