-- A collector's answer to a device_call/device_ctrl, in cluster mode: published on the
-- request's reply channel only while the writer's lease of the device is current
-- (lease_is_current, store/lease_guard.lua, put in front of this script), so a collector
-- that was paused past its lease cannot answer for the device's new owner.
-- ARGV: lease key, token ("EPOCH COLLECTOR_ID"), reply channel, JSON answer.
-- Returns the number of subscribers that heard it, or -1 when the lease is not current.
if not lease_is_current(ARGV[1], ARGV[2]) then
  return -1
end
return redis.call("PUBLISH", ARGV[3], ARGV[4])
