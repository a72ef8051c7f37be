"""What every Redis user in the server shares: the command client with its Lua
scripts (:mod:`.client`), the names of keys and channels (:mod:`.names`), the pub/sub
envelope (:mod:`.envelope`), the URL (:mod:`.url`), our own RESP link (:mod:`.link`) and
the pub/sub connections built on it (:mod:`.pubsub`).

The Redis engine (``channels/redis_*``) and the Redis revocation store
(``auth/redis_revocation``) are built on it; neither imports the other.
"""
