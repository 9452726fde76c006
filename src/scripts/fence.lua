-- Raise this node's fencing counter to the token of a grant, only while that grant's value
-- still holds the key (so the raise happens before the key can expire or be released here).
-- KEYS[1]: lock key; KEYS[2]: its fencing counter; ARGV[1]: the grant's value; ARGV[2]: token.
-- Returns 1 raised (or already there), 0 our value is not on this node.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[2])
end
return 1
