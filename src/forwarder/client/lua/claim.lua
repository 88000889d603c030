-- Claims an idempotency key, or takes over a claim whose task was never sent once its lease ran
-- out (its claimer died between the claim and the send). KEYS: the claim. ARGV: the new record
-- (JSON), the retention in ms, now and the lease in seconds. Returns {1, record} for a new claim,
-- {2, record} for a claim taken over (its task id kept), {0, record} for another's live claim.
local raw = redis.call('GET', KEYS[1])
local ok, record = false, nil
if raw then
    ok, record = pcall(cjson.decode, raw)
end
if not ok or type(record) ~= 'table' then
    -- No claim, or torn or foreign content: treated as no claim.
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return {1, ARGV[1]}
end
local now = tonumber(ARGV[3])
if record['sent'] == false and tonumber(record['lease_until'] or 0) <= now then
    record['lease_until'] = now + tonumber(ARGV[4])
    local taken = cjson.encode(record)
    redis.call('SET', KEYS[1], taken, 'KEEPTTL')
    return {2, taken}
end
return {0, raw}
