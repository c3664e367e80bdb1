-- Cluster mode, in front of alarm_event.lua (after the lease guard): an event judged by
-- the holder of the device's lease is written only while that lease is still current
-- and the device still configured (a deleted device's alarms are cleared once, by
-- alarm_orphan.lua; a raise judged just before the deletion must not come after it).
-- ARGV[6] the device's lease key, ARGV[7] the token ("EPOCH COLLECTOR_ID") the event was
-- judged under, ARGV[8] the device set, ARGV[9] the device id. Returns 0, nothing
-- written, when the lease is not current or the device is gone.
if not lease_is_current(ARGV[6], ARGV[7]) or redis.call("SISMEMBER", ARGV[8], ARGV[9]) == 0 then
  return 0
end
