#pragma once
// The one Lua script of the redis store. Every multi-key operation is one call of it, so Redis runs it atomically:
// `EVALSHA <sha> 0 <operation> <prefix> <arguments...>`. Keys are built here from the prefix and parts the client
// has already escaped (README.md, "Key layout"); numbers that become scores or values are passed through as the
// client wrote them, never printed by Lua (whose "%.14g" would round them).

namespace switchboard::stores::redis_script {

inline constexpr const char* kSource = R"lua(
local op = ARGV[1]
local p = ARGV[2]

-- the whole number @x as text, without Lua's rounding to 14 digits
local function int(x) return string.format('%.0f', x) end

-- ARGV[k..]: n entries of (plan, recipient, created_ms, state, state blob, content blob). An entry whose
-- (plan, recipient) exists is kept as it is.
local function outbox_add(first, n)
  for k = first, first + 6 * n - 1, 6 do
    local plan, recipient, created = ARGV[k], ARGV[k + 1], ARGV[k + 2]
    local entries = p .. 'outbox:' .. plan
    if redis.call('HEXISTS', entries, recipient) == 0 then
      local seq = string.format('%016x', redis.call('INCR', p .. 'outbox-seq'))
      redis.call('HSET', entries, recipient, seq .. created .. '\n' .. ARGV[k + 5])
      redis.call('HSET', p .. 'outbox-state:' .. plan, recipient, ARGV[k + 4])
      if ARGV[k + 3] == 'pending' then
        redis.call('ZADD', p .. 'outbox-pending', created, seq .. plan .. '\n' .. recipient)
      end
    end
  end
end

-- ARGV[k..]: n writes of (space, key, 's' or 'd', value).
local function put_values(first, n)
  for k = first, first + 4 * n - 1, 4 do
    local space = p .. 'kv:' .. ARGV[k]
    if ARGV[k + 2] == 's' then
      redis.call('HSET', space, ARGV[k + 1], ARGV[k + 3])
    else
      redis.call('HDEL', space, ARGV[k + 1])
    end
  end
end

-- Keeps a channel's zset until its newest member leaves the window.
local function expire_with_newest(key, window)
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if newest[2] then redis.call('PEXPIREAT', key, int(tonumber(newest[2]) + window)) end
end

-- redis.call(command, key, <items...>) in pieces, so that no call unpacks more than Lua's stack allows.
local function call_in_pieces(command, key, items)
  for first = 1, #items, 1000 do
    redis.call(command, key, unpack(items, first, math.min(first + 999, #items)))
  end
end

if op == 'commit' then
  -- now, window, log (1/0), n, then per message: pair, connection, channel, id, timestamp, log blob, writes,
  -- outbox entries, and the writes and entries themselves. Returns how many messages were new.
  -- Redis calls are what costs: the ledger is read (ZMSCORE) and written (ZADD) once per channel, not per message.
  local now, window, log = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5] == '1'
  local expired = '(' .. int(now - window)

  -- Pass 1: the messages, grouped by channel; per channel, expired entries go and the ledger is read.
  local messages, channels, channel_list = {}, {}, {}
  local k = 7
  for m = 1, tonumber(ARGV[6]) do
    local writes, entries = tonumber(ARGV[k + 6]), tonumber(ARGV[k + 7])
    local pair = ARGV[k]
    local channel = channels[pair]
    if channel == nil then
      channel = { pair = pair, connection = ARGV[k + 1], name = ARGV[k + 2], seen = p .. 'seen:' .. pair,
                  log = p .. 'log:' .. pair, ids = {}, new = {}, logged = {} }
      channels[pair] = channel
      channel_list[#channel_list + 1] = channel
    end
    channel.ids[#channel.ids + 1] = ARGV[k + 3]
    messages[m] = { channel = channel, at = k, writes = writes, entries = entries }
    k = k + 8 + 4 * writes + 6 * entries
  end
  local known = {}
  for _, channel in ipairs(channel_list) do
    redis.call('ZREMRANGEBYSCORE', channel.seen, '-inf', expired)
    redis.call('ZREMRANGEBYSCORE', channel.log, '-inf', expired)
    redis.call('SADD', p .. 'channels', channel.pair)
    local scores = redis.call('ZMSCORE', channel.seen, unpack(channel.ids))
    local set = {}
    for i, id in ipairs(channel.ids) do
      if scores[i] then set[id] = true end
    end
    known[channel.pair] = set
  end

  -- Pass 2, in batch order: each new message's cursor move, log entry, writes and outbox entries.
  local added = 0
  for _, message in ipairs(messages) do
    local channel, a = message.channel, message.at
    local id, ts = ARGV[a + 3], ARGV[a + 4]
    local set = known[channel.pair]
    if not set[id] then
      set[id] = true
      added = added + 1
      local new = channel.new
      new[#new + 1] = ts
      new[#new + 1] = id
      local at = tonumber(ts)
      if channel.at == nil then
        local stored = redis.call('HGET', p .. 'cursors:' .. channel.connection, channel.name)
        channel.at = stored and tonumber(string.match(stored, '^(%S+)')) or false
      end
      if channel.at == false or channel.at <= at then
        channel.at, channel.ts, channel.id = at, ts, id
      end
      if log then
        local logged = channel.logged
        logged[#logged + 1] = ts
        logged[#logged + 1] = ARGV[a + 5]
      end
      put_values(a + 8, message.writes)
      outbox_add(a + 8 + 4 * message.writes, message.entries)
    end
  end

  -- Pass 3, per channel: the ledger and the log written at once, the cursor, and the keys' expiry.
  for _, channel in ipairs(channel_list) do
    if #channel.new > 0 then
      call_in_pieces('ZADD', channel.seen, channel.new)
      if #channel.logged > 0 then
        local count = #channel.logged / 2
        local seq = redis.call('INCRBY', p .. 'log-seq', count) - count
        for i = 2, #channel.logged, 2 do
          seq = seq + 1
          channel.logged[i] = string.format('%016x', seq) .. channel.logged[i]
        end
        call_in_pieces('ZADD', channel.log, channel.logged)
      end
    end
    if channel.id then
      redis.call('HSET', p .. 'cursors:' .. channel.connection, channel.name, channel.ts .. ' ' .. channel.id)
      redis.call('SADD', p .. 'connections', channel.connection)
    end
    expire_with_newest(channel.seen, window)
    expire_with_newest(channel.log, window)
  end
  return added
end

if op == 'values' then
  put_values(4, tonumber(ARGV[3]))
  return 0
end

if op == 'outbox_add' then
  outbox_add(4, tonumber(ARGV[3]))
  return 0
end

if op == 'outbox_update' then
  -- n, then per entry: plan, recipient, state, state blob. Returns the 1-based index of the first entry that does
  -- not exist (the others are updated all the same), or 0.
  local missing = 0
  local pending = p .. 'outbox-pending'
  local k = 4
  for i = 1, tonumber(ARGV[3]) do
    local plan, recipient, state = ARGV[k], ARGV[k + 1], ARGV[k + 2]
    local content = redis.call('HGET', p .. 'outbox:' .. plan, recipient)
    if not content then
      if missing == 0 then missing = i end
    else
      redis.call('HSET', p .. 'outbox-state:' .. plan, recipient, ARGV[k + 3])
      local newline = string.find(content, '\n', 17, true)
      local member = string.sub(content, 1, 16) .. plan .. '\n' .. recipient
      if state == 'pending' then
        redis.call('ZADD', pending, string.sub(content, 17, newline - 1), member)
      else
        redis.call('ZREM', pending, member)
      end
    end
    k = k + 4
  end
  return missing
end

if op == 'outbox_pending' then
  -- Per pending entry, oldest first: plan, recipient, content, state.
  local result = {}
  for _, member in ipairs(redis.call('ZRANGE', p .. 'outbox-pending', 0, -1)) do
    local newline = string.find(member, '\n', 17, true)
    local plan, recipient = string.sub(member, 17, newline - 1), string.sub(member, newline + 1)
    result[#result + 1] = plan
    result[#result + 1] = recipient
    result[#result + 1] = redis.call('HGET', p .. 'outbox:' .. plan, recipient)
    result[#result + 1] = redis.call('HGET', p .. 'outbox-state:' .. plan, recipient)
  end
  return result
end

if op == 'outbox_plan' then
  return { redis.call('HGETALL', p .. 'outbox:' .. ARGV[3]), redis.call('HGETALL', p .. 'outbox-state:' .. ARGV[3]) }
end

if op == 'cursors' then
  -- Of one connection (ARGV[3]) or, if empty, of all: connection, channel, cursor, ...
  local connections = ARGV[3] ~= '' and { ARGV[3] } or redis.call('SMEMBERS', p .. 'connections')
  local result = {}
  for _, connection in ipairs(connections) do
    local fields = redis.call('HGETALL', p .. 'cursors:' .. connection)
    for i = 1, #fields, 2 do
      result[#result + 1] = connection
      result[#result + 1] = fields[i]
      result[#result + 1] = fields[i + 1]
    end
  end
  return result
end

if op == 'prune' then
  -- now, window, before: entries past the window go uncounted (they were expired already); then everything
  -- older than before. Returns the dedup entries removed.
  local expired = '(' .. int(tonumber(ARGV[3]) - tonumber(ARGV[4]))
  local removed = 0
  for _, pair in ipairs(redis.call('SMEMBERS', p .. 'channels')) do
    local seen, log = p .. 'seen:' .. pair, p .. 'log:' .. pair
    redis.call('ZREMRANGEBYSCORE', seen, '-inf', expired)
    removed = removed + redis.call('ZREMRANGEBYSCORE', seen, '-inf', '(' .. ARGV[5])
    redis.call('ZREMRANGEBYSCORE', log, '-inf', '(' .. ARGV[5])
    if redis.call('EXISTS', seen) == 0 and redis.call('EXISTS', log) == 0 then
      redis.call('SREM', p .. 'channels', pair)
    end
  end
  return removed
end

return redis.error_reply('unknown switchboard store operation ' .. tostring(op))
)lua";

}  // namespace switchboard::stores::redis_script
