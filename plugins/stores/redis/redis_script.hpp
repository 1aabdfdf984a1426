#pragma once
// The one Lua script of the redis store. Every multi-key operation is one call of it, so Redis runs it atomically:
// `EVALSHA <sha> 0 <operation> <prefix> <fence> <arguments...>`. Lists (a batch's messages, outbox entries, writes) come
// packed into one MessagePack argument that the script unpacks with Redis's cmsgpack: many small arguments cost
// far more to send and parse than the script takes to run. Keys are built here from the prefix and parts the client
// has already escaped (README.md, "Key layout"); timestamps travel as text and are passed on as the client wrote
// them, never printed by Lua (whose "%.14g" would round them).

namespace switchboard::stores::redis_script {

inline constexpr const char* kSource = R"lua(
local op = ARGV[1]
local p = ARGV[2]

-- Fencing (DESIGN §8): ARGV[3] is empty or a packed list of (connection, lease value) this call writes for; if
-- one of those leases is no longer held with that value (another host took it, or it lapsed), nothing is written.
if ARGV[3] ~= '' then
  local fence = cmsgpack.unpack(ARGV[3])
  for k = 1, #fence, 2 do
    if redis.call('GET', p .. 'lease:' .. fence[k]) ~= fence[k + 1] then
      return redis.error_reply('LEASE_LOST ' .. fence[k])
    end
  end
end

-- the whole number @x as text, without Lua's rounding to 14 digits
local function int(x) return string.format('%.0f', x) end

-- The member an entry is in `outbox-pending` or `outbox-done` as (sequence, plan, newline, recipient), and its score
-- (created_ms), from the entry's content in `outbox:<plan>`.
local function outbox_member(content, plan, recipient)
  local newline = string.find(content, '\n', 17, true)
  return string.sub(content, 1, 16) .. plan .. '\n' .. recipient, string.sub(content, 17, newline - 1)
end

-- items: a flat list of (plan, recipient, created_ms, state, state blob, content blob). An entry whose
-- (plan, recipient) exists is kept as it is.
local function outbox_add(items)
  for k = 1, #items, 6 do
    local plan, recipient, created = items[k], items[k + 1], items[k + 2]
    local entries = p .. 'outbox:' .. plan
    if redis.call('HEXISTS', entries, recipient) == 0 then
      local seq = string.format('%016x', redis.call('INCR', p .. 'outbox-seq'))
      redis.call('HSET', entries, recipient, seq .. created .. '\n' .. items[k + 5])
      redis.call('HSET', p .. 'outbox-state:' .. plan, recipient, items[k + 4])
      local set = items[k + 3] == 'pending' and 'outbox-pending' or 'outbox-done'
      redis.call('ZADD', p .. set, created, seq .. plan .. '\n' .. recipient)
    end
  end
end

-- items: a flat list of (space, key, 's' or 'd', value), applied in order.
local function put_values(items)
  for k = 1, #items, 4 do
    local space = p .. 'kv:' .. items[k]
    if items[k + 2] == 's' then
      redis.call('HSET', space, items[k + 1], items[k + 3])
    else
      redis.call('HDEL', space, items[k + 1])
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
  -- now, window, log (1/0), then the packed batch: per message [pair, connection, channel, id, timestamp, log blob,
  -- writes, outbox entries]. Returns how many messages were new.
  -- Redis calls are what costs: the ledger is read (ZMSCORE) and written (ZADD) once per channel, not per message.
  local now, window, log = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6] == '1'
  local expired = '(' .. int(now - window)
  local messages = cmsgpack.unpack(ARGV[7])

  -- Pass 1: the messages, grouped by channel; per channel, expired entries go and the ledger is read.
  local channels, channel_list = {}, {}
  for _, message in ipairs(messages) do
    local pair = message[1]
    local channel = channels[pair]
    if channel == nil then
      channel = { pair = pair, connection = message[2], name = message[3], seen = p .. 'seen:' .. pair,
                  log = p .. 'log:' .. pair, ids = {}, new = {}, logged = {} }
      channels[pair] = channel
      channel_list[#channel_list + 1] = channel
    end
    channel.ids[#channel.ids + 1] = message[4]
  end
  local known = {}
  for _, channel in ipairs(channel_list) do
    redis.call('ZREMRANGEBYSCORE', channel.seen, '-inf', expired)
    redis.call('ZREMRANGEBYSCORE', channel.log, '-inf', expired)
    redis.call('SADD', p .. 'channels', channel.pair)
    local set, ids = {}, channel.ids
    for first = 1, #ids, 1000 do
      local last = math.min(first + 999, #ids)
      local scores = redis.call('ZMSCORE', channel.seen, unpack(ids, first, last))
      for i = first, last do
        if scores[i - first + 1] then set[ids[i]] = true end
      end
    end
    known[channel.pair] = set
  end

  -- Pass 2, in batch order: each new message's cursor move, log entry, writes and outbox entries.
  local added = 0
  for _, message in ipairs(messages) do
    local channel = channels[message[1]]
    local id, ts = message[4], message[5]
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
        logged[#logged + 1] = message[6]
      end
      put_values(message[7])
      outbox_add(message[8])
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
  put_values(cmsgpack.unpack(ARGV[4]))
  return 0
end

if op == 'outbox_add' then
  outbox_add(cmsgpack.unpack(ARGV[4]))
  return 0
end

if op == 'outbox_update' then
  -- Packed: per entry plan, recipient, state, state blob. Returns the 1-based index of the first entry that does
  -- not exist (the others are updated all the same), or 0.
  local missing = 0
  local pending, done = p .. 'outbox-pending', p .. 'outbox-done'
  local items = cmsgpack.unpack(ARGV[4])
  for k = 1, #items, 4 do
    local i = (k + 3) / 4
    local plan, recipient, state = items[k], items[k + 1], items[k + 2]
    local content = redis.call('HGET', p .. 'outbox:' .. plan, recipient)
    if not content then
      if missing == 0 then missing = i end
    else
      redis.call('HSET', p .. 'outbox-state:' .. plan, recipient, items[k + 3])
      local member, created = outbox_member(content, plan, recipient)
      if state == 'pending' then
        redis.call('ZADD', pending, created, member)
        redis.call('ZREM', done, member)
      else
        redis.call('ZREM', pending, member)
        redis.call('ZADD', done, created, member)
      end
    end
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
  return { redis.call('HGETALL', p .. 'outbox:' .. ARGV[4]), redis.call('HGETALL', p .. 'outbox-state:' .. ARGV[4]) }
end

if op == 'cursors' then
  -- Of one connection (ARGV[4]) or, if empty, of all: connection, channel, cursor, ...
  local connections = ARGV[4] ~= '' and { ARGV[4] } or redis.call('SMEMBERS', p .. 'connections')
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
  -- now, window, before, what ('all', or 'outbox' for the calls after the first), limit: dedup entries past the
  -- window go uncounted (they were expired already), then everything older than before. Returns the dedup entries
  -- removed, the outbox entries removed (`limit` at most) and 1 once the backfill scan below is done: the client calls
  -- again until fewer than `limit` went and the scan is done, so the server serves others between bounded calls.
  local expired = '(' .. int(tonumber(ARGV[4]) - tonumber(ARGV[5]))
  local removed = 0
  local channels = ARGV[7] == 'all' and redis.call('SMEMBERS', p .. 'channels') or {}
  for _, pair in ipairs(channels) do
    local seen, log = p .. 'seen:' .. pair, p .. 'log:' .. pair
    redis.call('ZREMRANGEBYSCORE', seen, '-inf', expired)
    removed = removed + redis.call('ZREMRANGEBYSCORE', seen, '-inf', '(' .. ARGV[6])
    redis.call('ZREMRANGEBYSCORE', log, '-inf', '(' .. ARGV[6])
    if redis.call('EXISTS', seen) == 0 and redis.call('EXISTS', log) == 0 then
      redis.call('SREM', p .. 'channels', pair)
    end
  end
  local done = p .. 'outbox-done'
  -- Entries that finished before `outbox-done` existed (a store written by an earlier release) are in no set: the
  -- outbox's state hashes are scanned, 1,000 keys a call, and their finished entries added to it, until the scan
  -- has seen every key once (`outbox-done-scan` then says "done"). Entries of later releases are there already (NX).
  local scan = p .. 'outbox-done-scan'
  local cursor = redis.call('GET', scan)
  if cursor ~= 'done' then
    local pattern = string.gsub(p, '[%*%?%[%]\\]', '\\%0') .. 'outbox-state:*'
    local page = redis.call('SCAN', cursor or '0', 'MATCH', pattern, 'COUNT', 1000)
    for _, key in ipairs(page[2]) do
      local plan = string.sub(key, #p + 14)
      local states = redis.call('HGETALL', key)
      for i = 1, #states, 2 do
        if cmsgpack.unpack(states[i + 1])[1] ~= 'pending' then
          local content = redis.call('HGET', p .. 'outbox:' .. plan, states[i])
          if content then
            local member, created = outbox_member(content, plan, states[i])
            redis.call('ZADD', done, 'NX', created, member)
          end
        end
      end
    end
    redis.call('SET', scan, page[1] == '0' and 'done' or page[1])
  end
  -- Finished outbox entries created before `before`, `limit` a call at most (a script blocks the server).
  local old = redis.call('ZRANGEBYSCORE', done, '-inf', '(' .. ARGV[6], 'LIMIT', 0, tonumber(ARGV[8]))
  for _, member in ipairs(old) do
    local newline = string.find(member, '\n', 17, true)
    local plan, recipient = string.sub(member, 17, newline - 1), string.sub(member, newline + 1)
    redis.call('HDEL', p .. 'outbox:' .. plan, recipient)
    redis.call('HDEL', p .. 'outbox-state:' .. plan, recipient)
    redis.call('ZREM', done, member)
  end
  return { removed, #old, redis.call('GET', scan) == 'done' and 1 or 0 }
end

if op == 'state' then
  -- A connection's state: connection, key, value.
  redis.call('HSET', p .. 'state:' .. ARGV[4], ARGV[5], ARGV[6])
  return 0
end

-- Leases: `P lease:<connection>` holds "<token> <holder>" with the lease's time to live; `P lease-token:<connection>`
-- counts acquisitions, so every new holder's token is larger than any before it.
if op == 'lease_acquire' then
  -- connection, holder, ttl ms. Returns {1, value, ttl} when taken, {0, value, remaining ms} when another has it.
  local key = p .. 'lease:' .. ARGV[4]
  local current = redis.call('GET', key)
  if current and string.match(current, '^%d+ (.*)$') ~= ARGV[5] then
    return { 0, current, redis.call('PTTL', key) }
  end
  local value = redis.call('INCR', p .. 'lease-token:' .. ARGV[4]) .. ' ' .. ARGV[5]
  if current then
    redis.call('SET', key, value, 'PX', ARGV[6])  -- the same holder, restarted: a new token fences its past self
  else
    redis.call('SET', key, value, 'NX', 'PX', ARGV[6])
  end
  return { 1, value, tonumber(ARGV[6]) }
end

if op == 'lease_renew' then
  -- connection, value, ttl ms. Returns 1 if still held with that value (and extended), else 0.
  local key = p .. 'lease:' .. ARGV[4]
  if redis.call('GET', key) ~= ARGV[5] then return 0 end
  redis.call('PEXPIRE', key, ARGV[6])
  return 1
end

if op == 'lease_release' then
  -- connection, value. Deletes the lease if still held with that value.
  local key = p .. 'lease:' .. ARGV[4]
  if redis.call('GET', key) == ARGV[5] then redis.call('DEL', key) end
  return 0
end

if op == 'lease_holder' then
  -- connection. Returns {value, remaining ms} or {}.
  local key = p .. 'lease:' .. ARGV[4]
  local current = redis.call('GET', key)
  if not current then return {} end
  return { current, redis.call('PTTL', key) }
end

return redis.error_reply('unknown switchboard store operation ' .. tostring(op))
)lua";

}  // namespace switchboard::stores::redis_script
