-- The status of a task's stored meta, or nil (nothing stored, or not JSON Celery wrote).
local function stored_status(key)
    local current = redis.call('GET', key)
    if not current then
        return nil
    end
    local ok, meta = pcall(cjson.decode, current)
    if ok and type(meta) == 'table' and type(meta['status']) == 'string' then
        return meta['status']
    end
    return nil
end

-- Stores a task's encoded meta (publishing it, as Celery does) unless a SUCCESS is stored already:
-- a duplicate delivery of a task never overwrites its result. Returns 1 if stored, else 0.
local function store_unless_success(key, value, expires)
    if stored_status(key) == 'SUCCESS' then
        return 0
    end
    if tonumber(expires) > 0 then
        redis.call('SET', key, value, 'EX', expires)
    else
        redis.call('SET', key, value)
    end
    redis.call('PUBLISH', key, value)
    return 1
end
