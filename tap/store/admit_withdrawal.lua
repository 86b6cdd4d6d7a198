-- admit_withdrawal: `HotState.admit_withdrawal`, atomically: nonce unseen (then remembered),
-- spendable >= amount (then reserved). A refusal for funds forgets the nonce again.
--
-- KEYS[1] balance hash <p>:{addr}:bal      KEYS[2] nonce <p>:{addr}:n:<nonce>
-- ARGV[1] amount (units, > 0)              ARGV[2] nonce memory ms
-- ARGV[3] '1': a missing balance is unknown (answer 'unknown', change nothing); '0': it is 0
-- Returns {code, 0} like admit_bet.

local bal, nonce = KEYS[1], KEYS[2]
local amount = tonumber(ARGV[1])

if ARGV[3] == '1' and redis.call('EXISTS', bal) == 0 then
  return {'unknown', 0}
end

local mark = redis.call('HGET', bal, 'mk') or ''
if not redis.call('SET', nonce, mark, 'NX', 'PX', ARGV[2]) then
  return {'replayed_nonce', 0}
end

local spendable = tonumber(redis.call('HGET', bal, 'v') or '0')
if spendable < amount then
  redis.call('DEL', nonce)
  return {'insufficient_funds', 0}
end
redis.call('HINCRBY', bal, 'v', '-' .. ARGV[1])
redis.call('HINCRBY', bal, 'j', '-' .. ARGV[1])
return {'ok', 0}
