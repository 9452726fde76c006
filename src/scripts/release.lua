-- Delete the lock only if this owner's value still holds it. A holder's release (ARGV[2] = "1")
-- also announces it to waiters subscribed to "<key>:released"; undoing a failed attempt does
-- not, or contenders woken together would collide again and again.
-- KEYS[1]: lock key; ARGV[1]: the owner's value; ARGV[2]: "1" to publish.
-- Returns 1 + the number of subscribers told when deleted, 0 key absent, -1 held by another
-- value (left untouched).
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] == '1' then
    -- pcall: an ACL user without channel rights still releases (waiters then poll).
    local told = redis.pcall('PUBLISH', KEYS[1] .. ':released', '')
    if type(told) == 'number' then
      return 1 + told
    end
  end
  return 1
elseif current == false then
  return 0
end
return -1
