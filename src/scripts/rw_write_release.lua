-- Release the write lock on this node: compare-and-delete the writer key, and remove this
-- writer's intent if it is still there (left by an earlier refused attempt; a writer that
-- gives up sends this with a value it never used, to withdraw its intent). Where
-- it deleted anything and ARGV[2] is "1", announce it on the writer key's channel, where
-- waiting readers and writers listen.
-- KEYS[1]: writer key; KEYS[2]: intent. ARGV[1]: the writer's value; ARGV[2]: "1" to announce;
-- ARGV[3]: the writer's identity (its intent's value).
-- Returns 1 + subscribers told when our writer key was deleted, 0 when it was not there, -1
-- when another writer holds the key.
local withdrawn = false
if redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
  withdrawn = true
end
local current = redis.call('GET', KEYS[1])
local released = current == ARGV[1]
if released then
  redis.call('DEL', KEYS[1])
end
local told = 0
if (released or withdrawn) and ARGV[2] == '1' then
  -- pcall: an ACL user without channel rights still releases (waiters then poll).
  local n = redis.pcall('PUBLISH', KEYS[1] .. ':released', '')
  if type(n) == 'number' then
    told = n
  end
end
if released then
  return 1 + told
elseif current then
  return -1
end
return 0
