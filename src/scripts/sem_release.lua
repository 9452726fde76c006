-- Release a semaphore permit on this node: compare-and-delete its slot key and, where it
-- deleted it and ARGV[2] is "1", announce that on the semaphore's channel
-- ("<semaphore>:released", built here as the other release scripts do), where every waiter
-- for a permit of it listens.
-- KEYS[1]: the slot key. ARGV[1]: the holder's value; ARGV[2]: "1" to announce; ARGV[3]: the
-- semaphore's name (its wake key).
-- Returns 1 + subscribers told when deleted, 0 when no key was there, -1 when another holder's.
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('DEL', KEYS[1])
  local told = 0
  if ARGV[2] == '1' then
    local n = redis.pcall('PUBLISH', ARGV[3] .. ':released', '')
    if type(n) == 'number' then
      told = n
    end
  end
  return 1 + told
elseif current then
  return -1
end
return 0
