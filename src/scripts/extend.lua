-- Reset the lease only if this owner's value still holds the key.
-- KEYS[1]: lock key; ARGV[1]: the owner's value; ARGV[2]: new lease in milliseconds.
-- Returns 1 extended, 0 key absent, -1 held by another value (left untouched).
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
elseif current == false then
  return 0
end
return -1
