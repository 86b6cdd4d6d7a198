-- credit: money moved by a commit (`HotState.credit`); a negative amount is a committed negative
-- adjustment. A credit whose ledger entry the balance already holds (entry_id <= t: the ledger
-- read that seeded or rebuilt it came after that commit) is not applied again. Only negative
-- moves are journalled: a rebuild then never adds a credit the ledger snapshot may already hold
-- (the safe direction). A negative one is journalled even when it is not applied, because the
-- journal is measured against the next rebuild's read, not against the seed's.
--
-- KEYS[1] balance hash <p>:{addr}:bal   v = spendable, t = ledger position (see redis_hot.py)
-- ARGV[1] amount (units, signed)
-- ARGV[2] '1': a missing balance is unknown (leave it missing: the ledger read that seeds it
--         already counts this money); '0': it is 0 (create it, at position 0)
-- ARGV[3] entry_id of the ledger row that made this move, or '' when the caller has none
--         (then the credit is applied whatever the position, as before positions existed)
-- Returns 'applied', 'included' (already in the balance) or 'unknown'.

local bal = KEYS[1]
local negative = tonumber(ARGV[1]) < 0
if redis.call('EXISTS', bal) == 0 then
  if ARGV[2] == '1' then return 'unknown' end
  local j = '0'
  if negative then j = ARGV[1] end
  redis.call('HSET', bal, 'v', ARGV[1], 'mk', 'new', 'j', j, 't', '0')
  return 'applied'
end
if negative then redis.call('HINCRBY', bal, 'j', ARGV[1]) end
if ARGV[3] ~= '' and tonumber(ARGV[3]) <= tonumber(redis.call('HGET', bal, 't') or '0') then
  return 'included'
end
redis.call('HINCRBY', bal, 'v', ARGV[1])
return 'applied'
