-- Ended subscriptions' presence removals and leave announcements, one or more channels.
-- Per subscription i (from 0): KEYS[2i+1] presence hash, KEYS[2i+2] expiry zset, and
-- from ARGV[5i+1]: client, info JSON (for the leave message), "1" to remove the
-- presence entry, the channel's pub/sub channel to announce the leave on ("" for
-- none), "1" for SPUBLISH (cluster).
-- The leave message is the envelope "~l" .. info JSON (redis/envelope.py, encode_join_leave).
-- Several channels only on a single Redis: on a cluster each call handles one channel
-- (its keys and pub/sub channel share the channel's hash slot).
local out = {}
for i = 0, #KEYS / 2 - 1 do
  local hash, zset, a = KEYS[2 * i + 1], KEYS[2 * i + 2], 5 * i
  if ARGV[a + 3] == "1" then
    redis.call("hdel", hash, ARGV[a + 1])
    redis.call("zrem", zset, ARGV[a + 1])
  end
  if ARGV[a + 4] ~= "" then
    if ARGV[a + 5] == "1" then
      redis.call("spublish", ARGV[a + 4], "~l" .. ARGV[a + 2])
    else
      redis.call("publish", ARGV[a + 4], "~l" .. ARGV[a + 2])
    end
  end
  out[i + 1] = 1
end
return out
