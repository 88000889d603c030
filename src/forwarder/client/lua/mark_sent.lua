-- Marks an idempotency claim's task as sent, if the claim is still for that task, keeping its
-- expiry. KEYS: the claim. ARGV: the task id. Returns 1 if marked, else 0.
local raw = redis.call('GET', KEYS[1])
if not raw then
    return 0
end
local ok, record = pcall(cjson.decode, raw)
if ok and type(record) == 'table' and record['task_id'] == ARGV[1] then
    record['sent'] = true
    redis.call('SET', KEYS[1], cjson.encode(record), 'KEEPTTL')
    return 1
end
return 0
