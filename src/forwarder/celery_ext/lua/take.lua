-- Acks, then takes up to ARGV[1] messages off the queue lists and records each as
-- unacknowledged, in one atomic step: a message is always in a queue or in kombu's record.
-- The record is kombu's Redis QoS.append's, byte for byte around the message: the delivery tag
-- scored by the consumer's clock in the index, [message, exchange, routing key] in the hash, so
-- kombu's restore_visible, restore_by_tag and celery inspect read it as their own.
-- KEYS: unacked_index, unacked, this consumer's taken record, then the queue lists in order.
-- ARGV: the most to take, the score (now), this take's number, the record's expiry in ms, then
-- the delivery tags to ack.
-- Returns {list, message, list, message, ...} for the messages taken.
for i = 5, #ARGV do
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
end
local want = tonumber(ARGV[1])
local taken = {}
local tags = {ARGV[3]}
for k = 4, #KEYS do
    if want <= 0 then
        break
    end
    local raws = redis.call('RPOP', KEYS[k], want)
    if raws then
        for _, raw in ipairs(raws) do
            local ok, message = pcall(cjson.decode, raw)
            local props = ok and type(message) == 'table' and message['properties']
            local tag = type(props) == 'table' and props['delivery_tag']
            if type(tag) == 'string' then
                local info = props['delivery_info']
                if type(info) ~= 'table' then
                    info = {}
                end
                redis.call('ZADD', KEYS[1], ARGV[2], tag)
                redis.call('HSET', KEYS[2], tag, '[' .. raw .. ',' .. cjson.encode(info['exchange'] or '')
                    .. ',' .. cjson.encode(info['routing_key'] or '') .. ']')
                tags[#tags + 1] = tag
            end
            -- A message without a tag is returned unrecorded, to fail in kombu as it always did.
            taken[#taken + 1] = KEYS[k]
            taken[#taken + 1] = raw
        end
        want = want - #raws
    end
end
if #taken > 0 then
    redis.call('SET', KEYS[3], cjson.encode(tags), 'PX', ARGV[4])
end
return taken
