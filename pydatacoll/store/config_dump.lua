-- The whole configuration in one atomic read (see pydatacoll/store/snapshot.py).
--
-- ARGV[1] is JSON: {"k": key templates from pydatacoll/store/keys.py}. The reply is JSON:
-- {"version": text ("" before the first change), "device": {id: {field: JSON text}},
--  "term": ..., "item": ..., "term_item": {"term_id:item_id": {...}}, "formula": ...}.
-- Field values stay the JSON texts Redis holds (quoted as strings), so nothing is
-- re-encoded on the way: numbers keep their exact text.

local K = cjson.decode(ARGV[1]).k

local function key(name, ...)
  return string.format(K[name], ...)
end

local function quote(text)
  return cjson.encode(text)
end

-- one hash as a JSON object of JSON texts
local function hash_json(k)
  local flat = redis.call("HGETALL", k)
  local parts = {}
  for i = 1, #flat, 2 do
    parts[#parts + 1] = quote(flat[i]) .. ":" .. quote(flat[i + 1])
  end
  return "{" .. table.concat(parts, ",") .. "}", #flat > 0
end

local function collection(set_name, hash_name)
  local parts = {}
  for _, id in ipairs(redis.call("SMEMBERS", key(set_name))) do
    local text, found = hash_json(key(hash_name, id))
    if found then parts[#parts + 1] = quote(id) .. ":" .. text end
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

local points = {}
for _, term_id in ipairs(redis.call("SMEMBERS", key("terms"))) do
  for _, item_id in ipairs(redis.call("SMEMBERS", key("term_items", term_id))) do
    local text, found = hash_json(key("term_item", term_id, item_id))
    if found then points[#points + 1] = quote(term_id .. ":" .. item_id) .. ":" .. text end
  end
end

return "{" .. '"version":' .. quote(redis.call("GET", key("config_version")) or "")
  .. ',"device":' .. collection("devices", "device")
  .. ',"term":' .. collection("terms", "term")
  .. ',"item":' .. collection("items", "item")
  .. ',"term_item":{' .. table.concat(points, ",") .. "}"
  .. ',"formula":' .. collection("formulas", "formula")
  .. "}"
