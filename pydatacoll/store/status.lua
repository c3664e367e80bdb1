-- Write device statuses and publish each one; one round trip for any number of devices.
-- ARGV: status key template, status channel template, then pairs of device_id, JSON status.
for i = 3, #ARGV, 2 do
  redis.call("HSET", string.format(ARGV[1], ARGV[i]), "status", ARGV[i + 1])
  redis.call("PUBLISH", string.format(ARGV[2], ARGV[i]), ARGV[i + 1])
end
return (#ARGV - 2) / 2
