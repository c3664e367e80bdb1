-- Cluster mode: formula statuses written only under the writer's current lease of each
-- formula's result device (lease_is_current, store/lease_guard.lua, put in front of this
-- script), so a collector paused past that lease never overwrites the new holder's.
-- ARGV: status hash key, lease key template, then per formula: formula_id, result
-- device_id, token ("EPOCH COLLECTOR_ID"), JSON status.
-- Returns {written, refused}.
local written, fenced = 0, 0
for i = 3, #ARGV, 4 do
  if lease_is_current(string.format(ARGV[2], ARGV[i + 1]), ARGV[i + 2]) then
    redis.call("HSET", ARGV[1], ARGV[i], ARGV[i + 3])
    written = written + 1
  else
    fenced = fenced + 1
  end
end
return {written, fenced}
