-- Deletes an idempotency claim only if it is still the caller's: another may have replaced it
-- after it expired. KEYS: the claim. ARGV: the caller's task id. Returns the keys deleted (0/1).
local value = redis.call('GET', KEYS[1])
if value and cjson.decode(value)['task_id'] == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
