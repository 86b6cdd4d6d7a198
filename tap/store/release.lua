-- release: undo a reservation (`HotState.release`): spendable += amount; the cell marker and the
-- nonce are forgotten when given. The release is journalled only when the reservation was made
-- under the balance's current rebuild mark (the mark stored with its nonce or cell marker): a
-- reservation from before the mark is not in the journal, so its release must not be either.
--
-- KEYS[1] balance hash; then KEYS[2..] the nonce key if ARGV[2] == '1', the cell key if ARGV[3] == '1'
-- ARGV[1] amount (units, > 0)
-- ARGV[4] '1': a missing balance is unknown (leave it missing: the ledger read that seeds it
--         already counts this money); '0': it is 0 (create it)

local bal = KEYS[1]
local nonce, cell
local i = 2
if ARGV[2] == '1' then nonce = KEYS[i]; i = i + 1 end
if ARGV[3] == '1' then cell = KEYS[i] end

local era = false
if nonce then era = redis.call('GET', nonce) end
if not era and cell then era = redis.call('GET', cell) end

if redis.call('EXISTS', bal) == 1 then
  redis.call('HINCRBY', bal, 'v', ARGV[1])
  if era and era == (redis.call('HGET', bal, 'mk') or '') then
    redis.call('HINCRBY', bal, 'j', ARGV[1])
  end
elseif ARGV[4] == '0' then
  redis.call('HSET', bal, 'v', ARGV[1], 'mk', 'new', 'j', '0')
end
if cell then redis.call('DEL', cell) end
if nonce then redis.call('DEL', nonce) end
return 1
