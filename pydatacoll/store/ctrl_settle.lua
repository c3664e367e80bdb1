-- The API's side of store/ctrl_answer.lua: its wait for a device_ctrl's answer timed
-- out. ARGV: the request's done key, its TTL in ms.
-- Returns 0 when the API settles it (the API then audits the timeout), or the collector's
-- JSON answer when that came first (already audited: the API answers with it).
if redis.call("SET", ARGV[1], "timeout", "NX", "PX", ARGV[2]) then
  return 0
end
return redis.call("GET", ARGV[1])
