-- One alarm event of the limits processor: appended to the alarm log, the active-alarm
-- hash updated, and published with its log entry id (as GET /api/v1/alarms/history
-- answers it).
-- KEYS[1] the log stream, KEYS[2] the active-alarm hash.
-- ARGV: log length (MAXLEN ~), event JSON text, "raise" or "clear", the hash field
-- (device:term:item:kind), the channel.
local id = redis.call("XADD", KEYS[1], "MAXLEN", "~", ARGV[1], "*", "event", ARGV[2])
if ARGV[3] == "raise" then
  redis.call("HSET", KEYS[2], ARGV[4], ARGV[2])
else
  redis.call("HDEL", KEYS[2], ARGV[4])
end
redis.call("PUBLISH", ARGV[5], string.sub(ARGV[2], 1, -2) .. ',"id":"' .. id .. '"}')
return 1
