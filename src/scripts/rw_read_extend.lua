-- Reset a reader's lease on this node to ARGV[2] ms from now (server time), only while it is
-- still a live member of the readers' set; the set's expiry stays at the latest reader's.
-- KEYS[1]: readers' set. ARGV[1]: the reader's value; ARGV[2]: new lease in ms.
-- Returns 1 extended, 0 not there (or expired).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score == false or tonumber(score) <= now then
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]))
return 1
