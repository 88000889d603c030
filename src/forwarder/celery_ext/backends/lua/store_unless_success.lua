-- Stores a task's encoded meta (publishing it, as Celery does) unless a SUCCESS is stored already:
-- a duplicate delivery of a task never overwrites its result. Returns 1 if stored, else 0.
local function store_unless_success(key, value, expires)
    local current = redis.call('GET', key)
    if current then
        local ok, meta = pcall(cjson.decode, current)
        if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then
            return 0
        end
    end
    if tonumber(expires) > 0 then
        redis.call('SET', key, value, 'EX', expires)
    else
        redis.call('SET', key, value)
    end
    redis.call('PUBLISH', key, value)
    return 1
end
