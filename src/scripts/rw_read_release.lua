-- Release a read lock on this node: remove this reader from the readers' set. When it was the
-- last live reader and ARGV[2] is "1", announce it on the writer key's channel
-- ("<writer>:released"), where a waiting writer listens; with ARGV[3] "1", announce every
-- release (the naive counting semaphore's waiters want any free place).
-- KEYS[1]: writer key; KEYS[2]: readers' set. ARGV[1]: the reader's value; ARGV[2]: "1" to
-- announce; ARGV[3]: "1" to announce even when readers remain.
-- Returns 1 + subscribers told when removed, 0 when this reader was not there (readers never
-- belong to another owner).
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local told = 0
local last = redis.call('ZCARD', KEYS[2]) == 0
if ARGV[2] == '1' and (last or ARGV[3] == '1') then
  -- pcall: an ACL user without channel rights still releases (waiters then poll).
  local n = redis.pcall('PUBLISH', KEYS[1] .. ':released', '')
  if type(n) == 'number' then
    told = n
  end
end
return 1 + told
