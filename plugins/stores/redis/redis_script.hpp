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

if op == 'commit' then
  -- now, window, log (1/0), n, then per message: pair, connection, channel, id, timestamp, log blob, writes,
  -- outbox entries, and the writes and entries themselves. Returns how many messages were new.
  local now, window, log = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5] == '1'
  local expired = '(' .. int(now - window)
  local touched, pairs_in_order = {}, {}
  local moves, moves_in_order = {}, {}
  local added = 0
  local k = 7
  for _ = 1, tonumber(ARGV[6]) do
    local pair, connection, channel, id, ts = ARGV[k], ARGV[k + 1], ARGV[k + 2], ARGV[k + 3], ARGV[k + 4]
    local writes, entries = tonumber(ARGV[k + 6]), tonumber(ARGV[k + 7])
    local seen = p .. 'seen:' .. pair
    if not touched[pair] then
      touched[pair] = true
      pairs_in_order[#pairs_in_order + 1] = pair
      redis.call('ZREMRANGEBYSCORE', seen, '-inf', expired)
      redis.call('ZREMRANGEBYSCORE', p .. 'log:' .. pair, '-inf', expired)
      redis.call('SADD', p .. 'channels', pair)
    end
    if redis.call('ZADD', seen, 'NX', ts, id) == 1 then
      added = added + 1
      local slot = connection .. '\n' .. channel
      local move = moves[slot]
      if move == nil then
        local stored = redis.call('HGET', p .. 'cursors:' .. connection, channel)
        move = { connection = connection, channel = channel }
        if stored then move.at = tonumber(string.match(stored, '^(%S+)')) end
        moves[slot] = move
        moves_in_order[#moves_in_order + 1] = move
      end
      local at = tonumber(ts)
      if move.at == nil or move.at <= at then
        move.at, move.ts, move.id = at, ts, id
      end
      if log then
        local seq = string.format('%016x', redis.call('INCR', p .. 'log-seq'))
        redis.call('ZADD', p .. 'log:' .. pair, ts, seq .. ARGV[k + 5])
      end
      put_values(k + 8, writes)
      outbox_add(k + 8 + 4 * writes, entries)
    end
    k = k + 8 + 4 * writes + 6 * entries
  end
  for _, move in ipairs(moves_in_order) do
    if move.id then
      redis.call('HSET', p .. 'cursors:' .. move.connection, move.channel, move.ts .. ' ' .. move.id)
      redis.call('SADD', p .. 'connections', move.connection)
    end
  end
  for _, pair in ipairs(pairs_in_order) do
    expire_with_newest(p .. 'seen:' .. pair, window)
    expire_with_newest(p .. 'log:' .. pair, window)
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
