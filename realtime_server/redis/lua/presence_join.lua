-- New subscriptions' presence entries and join announcements, one or more channels.
-- Per subscription i (from 0): KEYS[2i+1] presence hash, KEYS[2i+2] expiry zset, and
-- from ARGV[7i+1]: client, info JSON, expire at (ms), key ttl (ms), "1" to add the
-- presence entry, the channel's pub/sub channel to announce the join on ("" for none),
-- "1" for SPUBLISH (cluster).
-- The join message is the envelope "~j" .. info JSON (redis/envelope.py, encode_join_leave).
-- Several channels only on a single Redis: on a cluster each call handles one channel
-- (its keys and pub/sub channel share the channel's hash slot).
local out = {}
for i = 0, #KEYS / 2 - 1 do
  local hash, zset, a = KEYS[2 * i + 1], KEYS[2 * i + 2], 7 * i
  if ARGV[a + 5] == "1" then
    redis.call("hset", hash, ARGV[a + 1], ARGV[a + 2])
    redis.call("zadd", zset, ARGV[a + 3], ARGV[a + 1])
    redis.call("pexpire", hash, ARGV[a + 4])
    redis.call("pexpire", zset, ARGV[a + 4])
  end
  if ARGV[a + 6] ~= "" then
    if ARGV[a + 7] == "1" then
      redis.call("spublish", ARGV[a + 6], "~j" .. ARGV[a + 2])
    else
      redis.call("publish", ARGV[a + 6], "~j" .. ARGV[a + 2])
    end
  end
  out[i + 1] = 1
end
return out
