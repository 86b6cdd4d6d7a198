-- rebuild_apply: phase 2 of a rebuild, after the ledger was read. spendable := ledger available
-- + journal (the reservations and negative credits since the mark, which the read may not hold),
-- and the ledger position := the read's, exactly (not the larger of it and the old one: the new
-- balance holds what that read holds, so a later credit of an entry past it must still apply).
-- A balance stamped by a later rebuild, or already applied, is left to that rebuild; one created
-- after the mark ('new': seeded or first credited since) is rebased like a marked one.
--
-- KEYS[1] balance hash <p>:{addr}:bal
-- ARGV[1] the rebuild's mark   ARGV[2] ledger available (units)   ARGV[3] '1' if in the ledger
-- ARGV[4] the read's ledger position for this address (its highest entry_id; 0 if none)
-- Returns 'applied', 'seeded', 'skipped' or 'absent'.

--
-- The applied balance's mark becomes '<mark>=' (a new era), and 'f' names the era whose journal
-- was folded in ('<mark>' or 'new'): release.lua adds a hold back only if it belongs to the
-- current era or to the folded one — a reservation from before this rebuild's mark is in neither
-- the ledger read nor the journal, so the rebuild already gave it back (no double release).

local bal = KEYS[1]
local applied = ARGV[1] .. '='
if redis.call('EXISTS', bal) == 0 then
  if ARGV[3] == '1' then
    redis.call('HSET', bal, 'v', ARGV[2], 'mk', applied, 'f', ARGV[1], 'j', '0', 't', ARGV[4])
    return 'seeded'
  end
  return 'absent'
end
local mark = redis.call('HGET', bal, 'mk') or ''
if mark ~= ARGV[1] and mark ~= 'new' then
  return 'skipped'
end
local journal = redis.call('HGET', bal, 'j') or '0'
redis.call('HSET', bal, 'v', ARGV[2], 'mk', applied, 'f', mark, 'j', '0', 't', ARGV[4])
redis.call('HINCRBY', bal, 'v', journal)
return 'applied'
