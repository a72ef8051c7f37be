-- KEYS[1] presence hash, KEYS[2] expiry zset; ARGV[1] client
redis.call("hdel", KEYS[1], ARGV[1])
redis.call("zrem", KEYS[2], ARGV[1])
return 1
