-- Atomic configuration changes for PyDataColl (see pydatacoll/store/config.py).
--
-- ARGV[1] is JSON: {"k": key templates, "c": change channels (both from
-- pydatacoll/store/keys.py), "ops": [op, ...]}.
-- op = {"op": "create"|"put"|"update"|"delete",
--       "entity": "device"|"term"|"item"|"term_item"|"formula"|"gateway"|"gateway_point",
--       "id": id (term_item: "term_id:item_id"), "term_id", "item_id" (term_item),
--       (gateway_point: "gateway_id:ioa"), "gateway_id", "ioa" (gateway_point),
--       "fields": {name: JSON text} (create/put/update), "expect": {name: JSON text} (update)}
-- Every op is checked first; only when all pass is anything written, so a batch is
-- all-or-nothing. Ops are checked in order, and an op sees the entities put or deleted
-- before it in the same batch (not what a delete cascades to), so one batch may create a
-- device, its terms and their points. "check_only": true stops after the checks;
-- "version" (text) refuses with {"retry"} when STR:CONFIG_VERSION is no longer it. Each applied op bumps the configuration version and publishes one
-- change message. STR:CONFIG_HISTORY becomes "<origin>:<stamp>" (origin: kept, or this
-- change's TIME when the key is absent; stamp: this change's TIME), carried in the message
-- as "history". A STR:CONFIG_VERSION that INCR could not take (not an integer, or 19
-- digits and more) fails the script before anything is written. The reply is JSON: {"ok": true, "results": [...]} or
-- {"error": status, "code", "message", "field", "index"} or {"retry": true}.

local request = cjson.decode(ARGV[1])
local K = request.k
local ops = request.ops

local origin, stamp -- STR:CONFIG_HISTORY's parts for this call (set before any write)

local function key(name, ...)
  return string.format(K[name], ...)
end

local function quote(text)
  return cjson.encode(text)
end

local function array_json(list)
  local parts = {}
  for i, v in ipairs(list) do parts[i] = v end
  return "[" .. table.concat(parts, ",") .. "]"
end

-- a hash (flat HGETALL reply) as a JSON object: the values are JSON texts already
local function flat_json(flat)
  if #flat == 0 then return "null" end
  local parts = {}
  for i = 1, #flat, 2 do
    parts[#parts + 1] = quote(flat[i]) .. ":" .. flat[i + 1]
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function fail(status, code, message, field, index)
  error({reply = "{" .. '"error":' .. status .. ',"code":' .. quote(code)
    .. ',"message":' .. quote(message) .. ',"field":' .. (field and quote(field) or "null")
    .. ',"index":' .. (index - 1) .. "}"})
end

local function decoded_field(hash_key, name)
  local text = redis.call("HGET", hash_key, name)
  if not text then return nil end
  local ok, value = pcall(cjson.decode, text)
  if ok then return value end
  return text
end

local function entity_key(op)
  if op.entity == "term_item" then return key("term_item", op.term_id, op.item_id) end
  if op.entity == "gateway_point" then return key("gateway_point", op.gateway_id, op.ioa) end
  return key(op.entity, op.id)
end

local function exists(k)
  return redis.call("EXISTS", k) == 1
end

-- the entities put (true) or deleted (false) by earlier ops of the batch, and the fields
-- of those put: phase 1 sees the configuration as the batch leaves it so far
local present_overlay, fields_overlay = {}, {}

local function present(k)
  local o = present_overlay[k]
  if o ~= nil then return o end
  return exists(k)
end

-- the JSON text of a term's device_id as the batch leaves it (false when no term)
local function term_device_text(term_id)
  local k = key("term", term_id)
  if fields_overlay[k] then return fields_overlay[k].device_id end
  if present_overlay[k] == false then return false end
  return redis.call("HGET", k, "device_id")
end

-- phase 1: check every op against what is stored -----------------------------------
local LABEL = {device = "device", term = "term", item = "item", term_item = "term_item",
  formula = "formula", gateway = "gateway", gateway_point = "gateway point"}
-- the field that names an entity in "exists" / "not found" errors
local ID_FIELD = {term_item = "item_id", gateway_point = "ioa"}

-- formulas: the graph as the batch leaves it (overlay over what is stored) --------------
local formula_overlay = {}  -- id -> {result, params} or false (deleted in this batch)

-- a formula's result point and parameters ("d:t:i"), from its fields (JSON texts)
local function formula_from_fields(fields)
  local params = {}
  for name, text in pairs(fields) do
    if string.match(name, "^p%d+$") then params[name] = cjson.decode(text) end
  end
  return {
    result = cjson.decode(fields.device_id) .. ":" .. cjson.decode(fields.term_id) .. ":"
      .. cjson.decode(fields.item_id),
    params = params,
  }
end

local function stored_formula(flat)
  local fields = {}
  for i = 1, #flat, 2 do fields[flat[i]] = flat[i + 1] end
  return formula_from_fields(fields)
end

local function formula_def(id)
  local o = formula_overlay[id]
  if o ~= nil then
    if o == false then return nil end
    return o
  end
  local flat = redis.call("HGETALL", key("formula", id))
  if #flat == 0 then return nil end
  return stored_formula(flat)
end

-- ids of the formulas that use a point
local function formula_users(point)
  local users = {}
  for _, id in ipairs(redis.call("SMEMBERS", key("formula_param", point))) do
    if formula_overlay[id] == nil then users[#users + 1] = id end
  end
  for id, def in pairs(formula_overlay) do
    if def then
      for _, p in pairs(def.params) do
        if p == point then users[#users + 1] = id; break end
      end
    end
  end
  table.sort(users)
  return users
end

local function split_point(point)
  local d, t, i = string.match(point, "^([^:]+):([^:]+):([^:]+)$")
  return d, t, i
end

local function point_exists(point)
  local d, t, i = split_point(point)
  if not present(key("term_item", t, i)) then return false end
  local text = term_device_text(t)
  return text and text == quote(d)
end

-- the formula (other than `id`) that writes `point`, as the batch leaves the graph; the
-- stored formulas are read once per script (bounded by max_formulas)
local stored_results = nil
local function result_writer(point, id)
  if stored_results == nil then
    stored_results = {}
    for _, other in ipairs(redis.call("SMEMBERS", key("formulas"))) do
      local flat = redis.call("HMGET", key("formula", other), "device_id", "term_id", "item_id")
      if flat[1] and flat[2] and flat[3] then
        stored_results[other] = cjson.decode(flat[1]) .. ":" .. cjson.decode(flat[2]) .. ":"
          .. cjson.decode(flat[3])
      end
    end
  end
  local writers = {}
  for other, result in pairs(stored_results) do
    if formula_overlay[other] == nil and other ~= id and result == point then
      writers[#writers + 1] = other
    end
  end
  for other, def in pairs(formula_overlay) do
    if def and other ~= id and def.result == point then writers[#writers + 1] = other end
  end
  table.sort(writers)
  return writers[1]
end

local function check_formula(op, index)
  if op.op == "delete" then
    formula_overlay[op.id] = false
    return
  end
  local def = formula_from_fields(op.fields)
  local names = {}
  for name, _ in pairs(def.params) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    if not point_exists(def.params[name]) then
      fail(404, "not_found", "parameter not found: " .. name .. "=" .. def.params[name], name, index)
    end
  end
  if not point_exists(def.result) then
    fail(404, "not_found", "result point " .. def.result .. " not found!", "item_id", index)
  end
  local writer = result_writer(def.result, op.id)
  if writer then
    fail(409, "conflict", "result point " .. def.result .. " is already written by formula "
      .. writer, "item_id", index)
  end
  formula_overlay[op.id] = def
  -- a cycle: following results to the formulas that use them leads back to this one
  local visited = {}
  local stack = {{point = def.result, path = op.id}}
  while #stack > 0 do
    local top = table.remove(stack)
    for _, id in ipairs(formula_users(top.point)) do
      if id == op.id then
        local field = "formula"
        for _, name in ipairs(names) do
          if def.params[name] == top.point then field = name; break end
        end
        fail(409, "conflict", "cycle: formula " .. top.path .. " -> formula " .. op.id
          .. " (" .. field .. " = " .. top.point .. ")", field, index)
      end
      if not visited[id] then
        visited[id] = true
        local def = formula_def(id)
        if def then
          stack[#stack + 1] = {point = def.result, path = top.path .. " -> " .. id}
        end
      end
    end
  end
end

local function check_op(op, index)
  local k = entity_key(op)
  local stored = present(k)
  if op.op == "create" and stored then
    fail(409, "conflict", LABEL[op.entity] .. " already exists!", ID_FIELD[op.entity] or "id", index)
  end
  if (op.op == "update" or op.op == "delete") and not stored then
    local field = op.entity == "term_item" and "term_item" or (op.entity .. "_id")
    local message = op.entity == "term_item" and "term_item not found!" or (op.entity .. "_id not found!")
    if op.entity == "gateway_point" then field, message = "ioa", "gateway point (ioa) not found!" end
    fail(404, "not_found", message, field, index)
  end
  if op.op == "update" then
    local flat = redis.call("HGETALL", k)
    local count = 0
    for i = 1, #flat, 2 do
      count = count + 1
      if op.expect[flat[i]] ~= flat[i + 1] then error({retry = true}) end
    end
    for _, _ in pairs(op.expect) do count = count - 1 end
    if count ~= 0 then error({retry = true}) end
  end
  if op.entity == "formula" then return check_formula(op, index) end
  if op.op == "delete" then return end
  if op.entity == "term" then
    local device_id = cjson.decode(op.fields.device_id)
    if not present(key("device", device_id)) then
      fail(404, "not_found", "device_id not found!", "device_id", index)
    end
  elseif op.entity == "gateway_point" then
    if not exists(key("gateway", op.gateway_id)) then
      fail(404, "not_found", "gateway_id not found!", "gateway_id", index)
    end
    local d, t, i = cjson.decode(op.fields.device_id), cjson.decode(op.fields.term_id),
      cjson.decode(op.fields.item_id)
    if not point_exists(d .. ":" .. t .. ":" .. i) then
      fail(404, "not_found", "point " .. d .. ":" .. t .. ":" .. i .. " not found!", "item_id", index)
    end
  elseif op.entity == "term_item" then
    if not present(key("term", op.term_id)) then
      fail(404, "not_found", "term_id not found!", "term_id", index)
    end
    if not present(key("item", op.item_id)) then
      fail(404, "not_found", "item_id not found!", "item_id", index)
    end
    local device_text = term_device_text(op.term_id)
    if op.fields.device_id and op.fields.device_id ~= device_text then
      fail(409, "conflict", "device_id does not match the term's device", "device_id", index)
    end
  end
end

local function check(op, index)
  check_op(op, index)
  local k = entity_key(op)
  if op.op == "delete" then
    present_overlay[k], fields_overlay[k] = false, nil
  else
    present_overlay[k], fields_overlay[k] = true, op.fields
  end
end

-- phase 2: apply ---------------------------------------------------------------------
local cascade_terms, cascade_points

local function remove_point(device_id, term_id, item_id)
  redis.call("DEL", key("term_item", term_id, item_id))
  redis.call("SREM", key("term_items", term_id), item_id)
  redis.call("SREM", key("item_terms", item_id), term_id)
  redis.call("DEL", key("point_data", device_id, term_id, item_id))
  redis.call("HDEL", key("device_values", device_id), term_id .. ":" .. item_id)
  cascade_points[#cascade_points + 1] = "{" .. '"device_id":' .. quote(device_id)
    .. ',"term_id":' .. quote(term_id) .. ',"item_id":' .. quote(item_id) .. "}"
end

local function remove_term(term_id)
  local device_id = decoded_field(key("term", term_id), "device_id")
  for _, item_id in ipairs(redis.call("SMEMBERS", key("term_items", term_id))) do
    remove_point(device_id, term_id, item_id)
  end
  redis.call("DEL", key("term", term_id), key("term_items", term_id))
  redis.call("SREM", key("terms"), term_id)
  redis.call("SREM", key("device_terms", device_id), term_id)
  cascade_terms[#cascade_terms + 1] = quote(term_id)
end

local function write_hash(k, fields)
  redis.call("DEL", k)
  local args = {}
  for name, text in pairs(fields) do
    args[#args + 1] = name
    args[#args + 1] = text
  end
  if #args > 0 then redis.call("HSET", k, unpack(args)) end
end

-- a term changes device: move its membership, its points and their data
local function move_term(term_id, old_device, new_device)
  redis.call("SREM", key("device_terms", old_device), term_id)
  redis.call("SADD", key("device_terms", new_device), term_id)
  local device_text = quote(new_device)
  local old_values = key("device_values", old_device)
  local new_values = key("device_values", new_device)
  for _, item_id in ipairs(redis.call("SMEMBERS", key("term_items", term_id))) do
    redis.call("HSET", key("term_item", term_id, item_id), "device_id", device_text)
    local old_data = key("point_data", old_device, term_id, item_id)
    if exists(old_data) then
      redis.call("RENAME", old_data, key("point_data", new_device, term_id, item_id))
    end
    local field = term_id .. ":" .. item_id
    local value = redis.call("HGET", old_values, field)
    if value then
      redis.call("HSET", new_values, field, value)
      redis.call("HDEL", old_values, field)
    end
  end
end

local function unindex_formula(id, old)
  if #old == 0 then return end
  for _, point in pairs(stored_formula(old).params) do
    redis.call("SREM", key("formula_param", point), id)
  end
end

local function apply(op)
  local k = entity_key(op)
  local old = redis.call("HGETALL", k)
  local kind
  cascade_terms, cascade_points = {}, {}
  if op.entity == "formula" then
    unindex_formula(op.id, old)
    if op.op == "delete" then
      kind = "del"
      redis.call("DEL", k)
      redis.call("SREM", key("formulas"), op.id)
      redis.call("HDEL", key("formula_status"), op.id)
    else
      kind = (#old == 0) and "add" or "fresh"
      write_hash(k, op.fields)
      redis.call("SADD", key("formulas"), op.id)
      for _, point in pairs(formula_from_fields(op.fields).params) do
        redis.call("SADD", key("formula_param", point), op.id)
      end
    end
  elseif op.op == "delete" then
    kind = "del"
    if op.entity == "device" then
      for _, term_id in ipairs(redis.call("SMEMBERS", key("device_terms", op.id))) do
        remove_term(term_id)
      end
      redis.call("DEL", k, key("device_terms", op.id), key("device_values", op.id),
        key("device_status", op.id), key("frame_log", op.id))
      redis.call("SREM", key("devices"), op.id)
    elseif op.entity == "term" then
      remove_term(op.id)
    elseif op.entity == "gateway" then
      for _, ioa in ipairs(redis.call("SMEMBERS", key("gateway_points", op.id))) do
        redis.call("DEL", key("gateway_point", op.id, ioa))
      end
      redis.call("DEL", k, key("gateway_points", op.id))
      redis.call("SREM", key("gateways"), op.id)
    elseif op.entity == "gateway_point" then
      redis.call("DEL", k)
      redis.call("SREM", key("gateway_points", op.gateway_id), op.ioa)
    elseif op.entity == "item" then
      for _, term_id in ipairs(redis.call("SMEMBERS", key("item_terms", op.id))) do
        remove_point(decoded_field(key("term", term_id), "device_id"), term_id, op.id)
      end
      redis.call("DEL", k, key("item_terms", op.id))
      redis.call("SREM", key("items"), op.id)
    else
      remove_point(decoded_field(key("term", op.term_id), "device_id"), op.term_id, op.item_id)
    end
  else
    kind = (#old == 0) and "add" or "fresh"
    local fields = op.fields
    if op.entity == "term" then
      local new_device = cjson.decode(fields.device_id)
      local old_device = decoded_field(k, "device_id")
      if old_device and old_device ~= new_device then
        move_term(op.id, old_device, new_device)
      else
        redis.call("SADD", key("device_terms", new_device), op.id)
      end
      redis.call("SADD", key("terms"), op.id)
    elseif op.entity == "term_item" then
      fields.device_id = redis.call("HGET", key("term", op.term_id), "device_id")
      redis.call("SADD", key("term_items", op.term_id), op.item_id)
      redis.call("SADD", key("item_terms", op.item_id), op.term_id)
    elseif op.entity == "gateway_point" then
      redis.call("SADD", key("gateway_points", op.gateway_id), op.ioa)
    else
      redis.call("SADD", key(op.entity .. "s"), op.id)
    end
    write_hash(k, fields)
  end
  local data = flat_json(redis.call("HGETALL", k))
  local version = redis.call("INCR", key("config_version"))
  local history = origin .. ":" .. stamp
  redis.call("SET", key("config_history"), history)
  local message = "{" .. '"entity":' .. quote(op.entity) .. ',"op":' .. quote(kind)
    .. ',"id":' .. quote(op.id) .. ',"data":' .. data .. ',"old":' .. flat_json(old)
  if kind == "del" then
    message = message .. ',"cascade":{"terms":' .. array_json(cascade_terms)
      .. ',"term_items":' .. array_json(cascade_points) .. "}"
  end
  message = message .. ',"version":' .. version .. ',"history":' .. quote(history) .. "}"
  redis.call("PUBLISH", request.c[op.entity][kind], message)
  return data
end

local ok, err = pcall(function()
  if request.version and request.version ~= cjson.null
      and (redis.call("GET", key("config_version")) or "") ~= request.version then
    error({retry = true})
  end
  for index, op in ipairs(ops) do check(op, index) end
end)
if not ok then
  if type(err) == "table" and err.reply then return err.reply end
  if type(err) == "table" and err.retry then return '{"retry":true}' end
  error(err)
end

if request.check_only then return '{"ok":true,"results":[]}' end

-- Still nothing written: the version must take the INCRs, and the history is known.
local current = redis.call("GET", key("config_version"))
if current and (not string.match(current, "^%-?%d+$") or #current > 18) then
  return redis.error_reply("ERR STR:CONFIG_VERSION cannot be incremented: " .. current)
end
local now = redis.call("TIME")
stamp = string.format("%s.%06d", now[1], tonumber(now[2]))
origin = string.match(redis.call("GET", key("config_history")) or "", "^([^:]+):") or stamp

local results = {}
for index, op in ipairs(ops) do results[index] = apply(op) end
return '{"ok":true,"results":' .. array_json(results) .. "}"
