-- A collector leaves on a clean stop: its heartbeat key and index entry go at once.
-- ARGV: heartbeat key template, index key, collector_id. Returns 1 if it was there.
local gone = redis.call("DEL", string.format(ARGV[1], ARGV[3]))
redis.call("HDEL", ARGV[2], ARGV[3])
return gone
