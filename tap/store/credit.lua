-- credit: money moved by a commit (`HotState.credit`); a negative amount is a committed negative
-- adjustment. Only negative moves are journalled: a rebuild then never adds a credit the ledger
-- snapshot may already hold (the safe direction).
--
-- KEYS[1] balance hash <p>:{addr}:bal
-- ARGV[1] amount (units, signed)
-- ARGV[2] '1': a missing balance is unknown (leave it missing: the ledger read that seeds it
--         already counts this money); '0': it is 0 (create it)
-- Returns 1 when applied, 0 when the balance was unknown.

local bal = KEYS[1]
local negative = tonumber(ARGV[1]) < 0
if redis.call('EXISTS', bal) == 0 then
  if ARGV[2] == '1' then return 0 end
  local j = '0'
  if negative then j = ARGV[1] end
  redis.call('HSET', bal, 'v', ARGV[1], 'mk', 'new', 'j', j)
  return 1
end
redis.call('HINCRBY', bal, 'v', ARGV[1])
if negative then redis.call('HINCRBY', bal, 'j', ARGV[1]) end
return 1
