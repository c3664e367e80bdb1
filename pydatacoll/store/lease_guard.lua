-- Fencing guard, included at the top of any script that writes for a device on behalf of
-- a lease holder (ingest, command answers): the write goes ahead only while the device's
-- lease is alive and is exactly the writer's, "EPOCH COLLECTOR_ID". A collector that was
-- paused or cut off past its lease holds a stale epoch: its writes are refused, whatever
-- it believes. The holder's id is compared too because a Redis failover can lose the last
-- INCR of the epoch counter (asynchronous replication), so the same epoch number may be
-- handed out again, to another collector.
-- lease_key: string.format(LEASE template, device_id); token: "EPOCH COLLECTOR_ID".
local function lease_is_current(lease_key, token)
  return redis.call("GET", lease_key) == token
end
