-- Cluster mode, in front of alarm_event.lua: the clear of an alarm whose device is no
-- longer configured (deleted: no collector holds its lease ever again, so no fenced
-- event can clear it). Every collector may send it; it is written once, by the first:
-- only while the device is not in the device set and the alarm is still active.
-- ARGV[6] the device set, ARGV[7] the device id. Returns 0, nothing written, otherwise.
if redis.call("SISMEMBER", ARGV[6], ARGV[7]) == 1
  or redis.call("HEXISTS", KEYS[2], ARGV[4]) == 0 then
  return 0
end
