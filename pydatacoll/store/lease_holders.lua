-- Who holds each device's lease. ARGV: lease key template, then device ids.
-- Returns one "EPOCH COLLECTOR_ID" (or "" when free) per device, in order.
local held = {}
for i = 2, #ARGV do
  held[#held + 1] = redis.call("GET", string.format(ARGV[1], ARGV[i])) or ""
end
return held
