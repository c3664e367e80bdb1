-- Cluster mode, in front of alarm_event.lua (after the lease guard): an event judged by
-- the holder of the device's lease is written only while that lease is still current.
-- ARGV[6] the device's lease key, ARGV[7] the token ("EPOCH COLLECTOR_ID") the event was
-- judged under. Returns 0, nothing written, when the lease is not current.
if not lease_is_current(ARGV[6], ARGV[7]) then
  return 0
end
