-- Take the lock on this node if nobody holds it.
-- KEYS[1]: lock key; ARGV[1]: this attempt's unique value; ARGV[2]: lease in milliseconds.
-- Returns {1, 0} when granted, {0, pttl} when another value holds the key
-- (pttl: its remaining lease in ms, -1 if it has none).
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, 0}
end
return {0, redis.call('PTTL', KEYS[1])}
