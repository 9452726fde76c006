-- Delete the lock only if this owner's value still holds it, and announce the release to
-- waiters subscribed to "<key>:released" (costs nothing measurable when nobody listens).
-- KEYS[1]: lock key; ARGV[1]: the owner's value.
-- Returns 1 deleted, 0 key absent, -1 held by another value (left untouched).
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[1] .. ':released', '')
  return 1
elseif current == false then
  return 0
end
return -1
