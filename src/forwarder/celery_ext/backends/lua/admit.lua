-- A delivery's admission (after store_unless_success.lua): read the stored state and the cancel
-- marker, count the delivery, and store STARTED only if the task may start.
-- KEYS: the marker, the count, the result.
-- ARGV: the count's expiry, the deliveries allowed, STARTED's encoded meta ('' when the task may
-- not start: it expired), the result's expiry, then the completed states (a redelivery after one
-- of them is not run again).
-- Returns {canceled (0/1), deliveries, STARTED stored (0/1), the completed state stored or ''}.
local status = stored_status(KEYS[3])
for i = 5, #ARGV do
    if status == ARGV[i] then
        return {0, 0, 0, status}
    end
end
local marker = redis.call('GET', KEYS[1])
local deliveries = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[1])
if marker or ARGV[3] == '' or deliveries > tonumber(ARGV[2]) then
    return {marker and 1 or 0, deliveries, 0, ''}
end
store_unless_success(KEYS[3], ARGV[3], ARGV[4])
return {0, deliveries, 1, ''}
