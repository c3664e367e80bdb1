-- (appended to lease_guard.lua) Is ARGV[3] ("EPOCH COLLECTOR_ID") device ARGV[2]'s
-- current lease? ARGV: lease key template, device_id, token. Returns 1 or 0.
if lease_is_current(string.format(ARGV[1], ARGV[2]), ARGV[3]) then
  return 1
end
return 0
