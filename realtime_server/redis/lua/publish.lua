-- Publish to a channel, appending to its history stream first when it keeps history,
-- atomically; with an idempotency key, only if that key was not used on the channel
-- within its TTL (the check, the append, the publish and storing the key in one step).
-- KEYS[1] stream, KEYS[2] meta hash, KEYS[3] (optional) idempotency key
-- ARGV[1] pub/sub channel, ARGV[2] data (JSON), ARGV[3] info JSON or "", ARGV[4] tags JSON or "",
-- ARGV[5] history size (0: no history), ARGV[6] history ttl (ms), ARGV[7] meta ttl (ms),
-- ARGV[8] epoch to use when the stream is new, ARGV[9] now (ms), ARGV[10] "1" for SPUBLISH,
-- ARGV[11] idempotency key ttl (ms), with KEYS[3]
-- Returns {offset, epoch, published}: offset 0 and epoch "" without history; published 0
-- when KEYS[3] was already set (nothing done: offset and epoch are the first call's).
if KEYS[3] then
  local seen = redis.call("get", KEYS[3])
  if seen then
    local sep = string.find(seen, ":", 1, true)
    return {tonumber(string.sub(seen, 1, sep - 1)), string.sub(seen, sep + 1), 0}
  end
end
local offset, epoch = 0, ""
local header = {}
if tonumber(ARGV[5]) > 0 then
  epoch = redis.call("hget", KEYS[2], "e")
  if not epoch then
    epoch = ARGV[8]
    redis.call("hset", KEYS[2], "e", epoch)
  end
  offset = redis.call("hincrby", KEYS[2], "s", 1)
  redis.call("pexpire", KEYS[2], ARGV[7])
  local fields = {"d", ARGV[2], "t", ARGV[9]}
  if ARGV[3] ~= "" then table.insert(fields, "i"); table.insert(fields, ARGV[3]) end
  if ARGV[4] ~= "" then table.insert(fields, "g"); table.insert(fields, ARGV[4]) end
  redis.call("xadd", KEYS[1], "MAXLEN", ARGV[5], offset .. "-1", unpack(fields))
  redis.call("pexpire", KEYS[1], ARGV[6])
  table.insert(header, '"o":' .. offset .. ',"e":"' .. epoch .. '"')
end
if ARGV[3] ~= "" then table.insert(header, '"i":' .. ARGV[3]) end
if ARGV[4] ~= "" then table.insert(header, '"t":' .. ARGV[4]) end
-- Plain data when there is nothing to say about it (as a plain PUBLISH would send).
local message = ARGV[2]
if #header > 0 then message = "~p{" .. table.concat(header, ",") .. "}\n" .. ARGV[2] end
if ARGV[10] == "1" then
  redis.call("spublish", ARGV[1], message)
else
  redis.call("publish", ARGV[1], message)
end
if KEYS[3] then
  redis.call("set", KEYS[3], offset .. ":" .. epoch, "PX", ARGV[11])
end
return {offset, epoch, 1}
