-- A deleted formula's status removed, only while the formula is still deleted: a
-- collector paused past its leases replays its buffered configuration messages, and
-- its late deletion must not remove the status of a formula re-created with that id.
-- ARGV: the status hash key, the formula set key, the formula id. Returns HDEL's count.
if redis.call("SISMEMBER", ARGV[2], ARGV[3]) == 1 then
  return 0
end
return redis.call("HDEL", ARGV[1], ARGV[3])
