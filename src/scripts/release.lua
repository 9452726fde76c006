-- Delete the lock only if this owner's value still holds it.
-- KEYS[1]: lock key; ARGV[1]: the owner's value.
-- Returns 1 deleted, 0 key absent, -1 held by another value (left untouched).
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
elseif current == false then
  return 0
end
return -1
