-- admit_bet: the four steps of `HotState.admit_bet`, atomically and in the protocol's order:
-- rate token, nonce, one bet per cell, balance reservation. A refusal undoes every earlier step
-- except the rate token. Every key is one address's (hash tag `{address}`): one slot, Cluster-safe.
--
-- KEYS[1] balance hash  <p>:{addr}:bal   v = spendable units, mk = rebuild mark, j = journal
-- KEYS[2] rate bucket   <p>:{addr}:rl    g = level in grains, t = last now_ms (tap/ratelimit.py)
-- KEYS[3] nonce         <p>:{addr}:n:<nonce>    value = the balance's mark when reserved
-- KEYS[4] cell marker   <p>:{addr}:c:<cell_id>  value = the balance's mark when reserved
-- ARGV[1] amount (units, > 0)          ARGV[2] now_ms (the edge's clock)
-- ARGV[3] nonce memory ms              ARGV[4] cell marker memory ms
-- ARGV[5] grains gained per ms         ARGV[6] grains per token
-- ARGV[7] bucket capacity in grains    ARGV[8] ms an empty bucket takes to fill
-- ARGV[9] '1': a missing balance is unknown (answer 'unknown', change nothing); '0': it is 0
-- Returns {code, retry_after_ms}; code is 'ok', 'unknown' or an `AdmitReason`. On 'ok':
-- {'ok', tokens left, ms until the bucket is full} (the client's RateLimit-* headers).

local function ceil_div(a, b)
  -- exact for integers below 2^53: the float quotient is off by at most one
  local q = math.floor(a / b)
  if q * b < a then q = q + 1 end
  if (q - 1) * b >= a then q = q - 1 end
  return q
end

local bal, bucket, nonce, cell = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local amount = tonumber(ARGV[1])
local now = tonumber(ARGV[2])

if ARGV[9] == '1' and redis.call('EXISTS', bal) == 0 then
  return {'unknown', 0}
end

-- 1. rate token: integer grains, refilled from the stored level, never backwards in time
local per_ms, per_token, capacity = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local level, last = capacity, now
local stored = redis.call('HMGET', bucket, 'g', 't')
if stored[1] then
  level, last = tonumber(stored[1]), tonumber(stored[2])
  if now > last then
    level = math.min(capacity, level + (now - last) * per_ms)
    last = now
  end
end
local granted = level >= per_token
if granted then level = level - per_token end
redis.call('HSET', bucket, 'g', string.format('%.0f', level), 't', string.format('%.0f', last))
redis.call('PEXPIRE', bucket, ARGV[8])
if not granted then
  return {'rate_limited', ceil_div(per_token - level, per_ms)}
end

-- 2. nonce unseen, then remembered
local mark = redis.call('HGET', bal, 'mk') or ''
if not redis.call('SET', nonce, mark, 'NX', 'PX', ARGV[3]) then
  return {'replayed_nonce', 0}
end

-- 3. no bet by this address on this cell
if not redis.call('SET', cell, mark, 'NX', 'PX', ARGV[4]) then
  redis.call('DEL', nonce)
  return {'duplicate_cell_bet', 0}
end

-- 4. spendable >= amount, then reserved (and journalled for a rebuild in progress)
local spendable = tonumber(redis.call('HGET', bal, 'v') or '0')
if spendable < amount then
  redis.call('DEL', cell, nonce)
  return {'insufficient_funds', 0}
end
redis.call('HINCRBY', bal, 'v', '-' .. ARGV[1])
redis.call('HINCRBY', bal, 'j', '-' .. ARGV[1])
return {'ok', math.floor(level / per_token), ceil_div(capacity - level, per_ms)}
