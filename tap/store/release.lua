-- release: undo a reservation (`HotState.release`): spendable += amount; the cell marker and the
-- nonce are forgotten when given. The release is journalled only when the reservation was made
-- under the balance's current rebuild mark (the mark stored with its nonce or cell marker): a
-- reservation from before the mark is not in the journal, so its release must not be either.
--
-- KEYS[1] balance hash; then KEYS[2..] the nonce key if ARGV[2] is '1' (read the era, then
-- forget the nonce) or 'k' (read the era, keep the nonce), the cell key if ARGV[3] == '1'
-- ARGV[1] amount (units, >= 0)
-- ARGV[4] '1': a missing balance is unknown (leave it missing: the ledger read that seeds it
--         already counts this money); '0': it is 0 (create it)

local bal = KEYS[1]
local nonce, cell
local i = 2
if ARGV[2] == '1' or ARGV[2] == 'k' then nonce = KEYS[i]; i = i + 1 end
if ARGV[3] == '1' then cell = KEYS[i] end

local era = false
if nonce then era = redis.call('GET', nonce) end
if not era and cell then era = redis.call('GET', cell) end

if redis.call('EXISTS', bal) == 1 then
  local mk, folded = unpack(redis.call('HMGET', bal, 'mk', 'f'))
  mk = mk or ''
  -- Was the balance rebuilt from the ledger since this reservation? Then the rebuild already
  -- dropped its hold (a reservation from before the rebuild's mark is in neither the ledger
  -- read nor the journal): adding the amount again would count it twice. Eras (rebuild_apply):
  -- a balance rebuilt by mark M is 'M=', having folded in era 'f'; 'new' is one seeded from the
  -- ledger after its keys were lost; any other mark is a rebuild still in progress, whose apply
  -- overwrites the balance anyway. An unknown era (its keys expired) is applied, as before.
  local rebuilt = mk == 'new' or string.sub(mk, -1) == '='
  local stale = era and era ~= mk and era ~= folded and rebuilt
  if not stale then
    redis.call('HINCRBY', bal, 'v', ARGV[1])
    if era and era == mk then
      redis.call('HINCRBY', bal, 'j', ARGV[1])
    end
  end
elseif ARGV[4] == '0' then
  redis.call('HSET', bal, 'v', ARGV[1], 'mk', 'new', 'j', '0')
end
if cell then redis.call('DEL', cell) end
if nonce and ARGV[2] == '1' then redis.call('DEL', nonce) end
return 1
