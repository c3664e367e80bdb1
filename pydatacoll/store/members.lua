-- Every member of one set as one JSON array text (pydatacoll/store/config.py list_ids).
-- ARGV: the set's key. One bulk string, not an array of thousands of elements: a client
-- parses it at once (json.loads) rather than element by element.
local members = redis.call("SMEMBERS", ARGV[1])
if #members == 0 then
  return "[]"
end
return cjson.encode(members)
