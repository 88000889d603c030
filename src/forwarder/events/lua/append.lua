-- Append events to a task's stream, each once.
-- KEYS[1] the stream; ARGV: max length, expiry seconds (0: none), the number of the first event
-- (numbers increase along a stream, across deliveries), then kind, data pairs.
-- A write whose reply was lost (an interrupted call, a dropped connection) is sent again with the
-- events that follow it: those up to the stream's last number are already there and skipped.
local written = 0
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if last then
  local fields = last[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'n' then written = tonumber(fields[i + 1]) end
  end
end
local first = tonumber(ARGV[3])
for i = 4, #ARGV, 2 do
  local number = first + (i - 4) / 2
  if number > written then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'k', ARGV[i], 'd', ARGV[i + 1], 'n', number)
  end
end
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
