-- A collector's answer to a device_ctrl, with its audit entry, in one round trip.
-- The answer is kept briefly at the request's done key: whoever sets that key first
-- audits the command, the collector here (with the device's outcome) or the API when it
-- timed out first (store/ctrl_settle.lua), so every command has exactly one entry and a
-- late confirmation is never audited as a success.
-- In cluster mode the answer (and its entry) goes out only under the current lease
-- (lease_is_current, store/lease_guard.lua, is put in front of this script).
-- ARGV: lease key ("" = no lease check), token, reply channel, JSON answer, done key,
--       its TTL in ms, audit stream, its MAXLEN, then the entry's field/value pairs.
-- Returns the number of subscribers that heard the answer, or -1 (lease not current).
if ARGV[1] ~= "" and not lease_is_current(ARGV[1], ARGV[2]) then
  return -1
end
if redis.call("SET", ARGV[5], ARGV[4], "NX", "PX", ARGV[6]) then
  local entry = {ARGV[7], "MAXLEN", "=", ARGV[8], "*"}
  for i = 9, #ARGV do
    entry[#entry + 1] = ARGV[i]
  end
  redis.call("XADD", unpack(entry))
end
return redis.call("PUBLISH", ARGV[3], ARGV[4])
