-- rebuild_mark: phase 1 of a rebuild, before the ledger is read. Stamps the balance with this
-- rebuild's mark and empties its journal; from now on every reservation and negative credit is
-- journalled, and only a release of a reservation made under this mark.
--
-- KEYS[1] balance hash <p>:{addr}:bal      ARGV[1] the rebuild's mark (unique)
-- Returns 1 when marked, 0 when the balance is missing.

if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'mk', ARGV[1], 'j', '0')
return 1
