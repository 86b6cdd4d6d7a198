-- seed_balance: set a missing balance from a ledger read; an existing one is left alone (another
-- edge seeded it first, or it has moved since: either way it is at least as fresh as this read).
-- The read's ledger position goes with it, so a credit whose entry the read already counted is
-- not applied on top (credit.lua).
--
-- KEYS[1] balance hash <p>:{addr}:bal
-- ARGV[1] the ledger's available (units)
-- ARGV[2] the ledger position of that read: the highest entry_id of the address it includes
-- Returns 1 when seeded, 0 when it was already there.

if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'mk', 'new', 'j', '0', 't', ARGV[2])
return 1
