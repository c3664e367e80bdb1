-- Cluster mode: device statuses and frame logs written only under the writer's current
-- lease of each device (lease_is_current, store/lease_guard.lua, put in front of this
-- script), so a collector paused past a lease never overwrites the new owner's status
-- or appends to its frame log.
-- ARGV: status key template, status channel template, lease key template, frame log key
-- template, frames to keep, then per device: device_id, token ("EPOCH COLLECTOR_ID"),
-- JSON status ("": none), n, and n frame log lines.
-- Returns {statuses written, devices refused}.
local keep = tonumber(ARGV[5])
local written, fenced = 0, 0
local i = 6
while i <= #ARGV do
  local device, token, status, n = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  i = i + 4
  if not lease_is_current(string.format(ARGV[3], device), token) then
    fenced = fenced + 1
  else
    if status ~= "" then
      redis.call("HSET", string.format(ARGV[1], device), "status", status)
      redis.call("PUBLISH", string.format(ARGV[2], device), status)
      written = written + 1
    end
    if n > 0 then
      local key = string.format(ARGV[4], device)
      for k = i, i + n - 1, 1000 do
        redis.call("RPUSH", key, unpack(ARGV, k, math.min(k + 999, i + n - 1)))
      end
      redis.call("LTRIM", key, -keep, -1)
    end
  end
  i = i + n
end
return {written, fenced}
