"""The ledger database's schema as numbered migrations, and `migrate`, which applies them.

A migration is a tuple of SQL statements; `schema_version` holds the number of the last one
applied. `migrate` runs every pending migration and the version bump in one `BEGIN IMMEDIATE`
transaction, so two processes starting together cannot both apply one, and a crash half-way
leaves the previous version intact. Migrations are append-only: never edit a released one, add
the next. Opening connections lives in `tap/store/connect.py`, the writes in `write.py`, the
reads in `read.py`.

Decisions worth knowing before you write SQL against these tables:

- `accounts` holds the balances; `CHECK (available >= 0 AND locked >= 0)` is the last line of
  defence behind the writer's conditional updates.
- `ledger.entry_id` is `AUTOINCREMENT`: entry ids are public, so an id is never reused even after
  the archiver deletes the newest rows of a quiet database. `UNIQUE (ref, kind)` makes deposits,
  withdrawals and adjustments idempotent by their ref, and allows one stake, one payout and one
  refund row per bet (ref = bet_id).
- `bets.seq` is an explicit `INTEGER PRIMARY KEY`: the paging cursor must survive `VACUUM`,
  which may renumber an implicit rowid. `bet_id` is `UNIQUE`.
- Rejected bets are stored (status `rejected`, `reason`) so `GET /api/bets/by-nonce` answers and
  the nonce stays burned: `UNIQUE (address, nonce)` covers every bet. The one-bet-per-cell rule
  is a *partial* unique index, `(address, cell_id) WHERE status <> 'rejected'`, so a rejected
  bet never occupies the player's slot on that cell. `pending` is never stored: a bet reaches
  this database already confirmed or rejected.
- `ticks` is keyed `(symbol, ts, price)` `WITHOUT ROWID`: a replayed tick is ignored, two
  different prices in the same millisecond are both kept (a deciding tick must be findable).
- `archived_totals` carries, per address, the sums of ledger rows the archiver moved out, so
  Σ(rows kept) + archived == balance still holds; `adjustments` keeps the operator's reason for
  each admin credit, which the ledger row has no column for.
- `challenges` and `sessions` are for an edge that wants logins to survive a restart.
- `archived_nonces` keeps (address, nonce, bet_id) of every bet the archiver deleted, forever,
  and a trigger refuses a new bet on one: the nonce stays burned after its bet left.
- `cell_liability` holds, per cell with open bets, Σ amount × multiplier_bps // 10000 of its
  confirmed bets: what the writer checks `markets[].max_cell_liability` against.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the initial schema.
    (
        """CREATE TABLE accounts (
            address   TEXT PRIMARY KEY,
            available INTEGER NOT NULL DEFAULT 0 CHECK (available >= 0),
            locked    INTEGER NOT NULL DEFAULT 0 CHECK (locked >= 0)
        ) WITHOUT ROWID""",
        """CREATE TABLE ledger (
            entry_id      INTEGER PRIMARY KEY AUTOINCREMENT,
            address       TEXT NOT NULL REFERENCES accounts (address),
            kind          TEXT NOT NULL CHECK (kind IN
                            ('deposit', 'stake', 'payout', 'refund', 'withdrawal', 'adjustment')),
            amount        INTEGER NOT NULL,
            locked_delta  INTEGER NOT NULL,
            balance_after INTEGER NOT NULL CHECK (balance_after >= 0),
            ref           TEXT NOT NULL,
            at            INTEGER NOT NULL
        )""",
        "CREATE INDEX ledger_by_address ON ledger (address, entry_id)",
        "CREATE UNIQUE INDEX ledger_one_per_ref ON ledger (ref, kind)",
        """CREATE TABLE bets (
            seq                INTEGER PRIMARY KEY,
            bet_id             TEXT NOT NULL UNIQUE,
            address            TEXT NOT NULL,
            cell_id            TEXT NOT NULL,
            symbol             TEXT NOT NULL,
            col                INTEGER NOT NULL,
            row                INTEGER NOT NULL,
            t_start            INTEGER NOT NULL,
            t_end              INTEGER NOT NULL,
            price_lo           INTEGER NOT NULL,
            price_hi           INTEGER NOT NULL,
            amount             INTEGER NOT NULL CHECK (amount > 0),
            multiplier_bps     INTEGER NOT NULL CHECK (multiplier_bps >= 0),
            nonce              TEXT NOT NULL,
            status             TEXT NOT NULL CHECK (status IN
                                 ('confirmed', 'rejected', 'won', 'lost', 'void')),
            accepted_at        INTEGER NOT NULL,
            confirmed_at       INTEGER,
            resolved_at        INTEGER,
            payout             INTEGER,
            decided_ts         INTEGER,
            decided_price      INTEGER,
            reason             TEXT,
            timestamp          INTEGER NOT NULL,
            chain_id           INTEGER NOT NULL,
            min_multiplier_bps INTEGER NOT NULL,
            signature          TEXT NOT NULL,
            UNIQUE (address, nonce)
        )""",
        """CREATE UNIQUE INDEX bets_one_per_cell ON bets (address, cell_id)
            WHERE status <> 'rejected'""",
        "CREATE INDEX bets_by_address ON bets (address, seq)",
        "CREATE INDEX bets_by_address_status ON bets (address, status, seq)",
        "CREATE INDEX bets_open ON bets (symbol, col, row) WHERE status = 'confirmed'",
        """CREATE TABLE withdrawals (
            ref     TEXT PRIMARY KEY,
            address TEXT NOT NULL,
            nonce   TEXT NOT NULL,
            amount  INTEGER NOT NULL CHECK (amount > 0),
            status  TEXT NOT NULL CHECK (status IN ('completed', 'rejected')),
            reason  TEXT,
            at      INTEGER NOT NULL,
            UNIQUE (address, nonce)
        ) WITHOUT ROWID""",
        """CREATE TABLE adjustments (
            ref     TEXT PRIMARY KEY,
            address TEXT NOT NULL,
            amount  INTEGER NOT NULL,
            reason  TEXT NOT NULL,
            at      INTEGER NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE ticks (
            symbol TEXT NOT NULL,
            ts     INTEGER NOT NULL,
            price  INTEGER NOT NULL,
            PRIMARY KEY (symbol, ts, price)
        ) WITHOUT ROWID""",
        """CREATE TABLE archive_runs (
            run_id          INTEGER PRIMARY KEY,
            started_at      INTEGER NOT NULL,
            finished_at     INTEGER,
            cutoff          INTEGER NOT NULL,
            status          TEXT NOT NULL CHECK (status IN
                              ('started', 'exported', 'verified', 'deleted', 'failed')),
            path            TEXT,
            manifest_sha256 TEXT,
            bets            INTEGER NOT NULL DEFAULT 0,
            entries         INTEGER NOT NULL DEFAULT 0,
            ticks_purged    INTEGER NOT NULL DEFAULT 0,
            error           TEXT
        )""",
        """CREATE TABLE archived_totals (
            address      TEXT PRIMARY KEY,
            amount       INTEGER NOT NULL DEFAULT 0,
            locked_delta INTEGER NOT NULL DEFAULT 0,
            entries      INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID""",
        """CREATE TABLE challenges (
            nonce      TEXT PRIMARY KEY,
            address    TEXT NOT NULL,
            issued_at  INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            used       INTEGER NOT NULL DEFAULT 0 CHECK (used IN (0, 1))
        ) WITHOUT ROWID""",
        "CREATE INDEX challenges_by_expiry ON challenges (expires_at)",
        """CREATE TABLE sessions (
            token_hash  TEXT PRIMARY KEY,
            address     TEXT NOT NULL,
            session_key TEXT NOT NULL,
            expires_at  INTEGER NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX sessions_by_expiry ON sessions (expires_at)",
    ),
    # 2: the nonces used recently, reloaded into the hot state at startup and after Redis loss.
    (
        "CREATE INDEX bets_by_accepted_at ON bets (accepted_at)",
        "CREATE INDEX withdrawals_by_at ON withdrawals (at)",
    ),
    # 3: nonce tombstones. A nonce is unique per address forever (API.md), but the archiver
    # deletes old bets and with them their row in UNIQUE (address, nonce): a new request reusing
    # the nonce would be stored with the archived bet's own deterministic bet_id. The archiver
    # writes each deleted bet's (address, nonce) here in its delete transaction; the trigger
    # refuses a bet on a tombstoned nonce as a constraint (the writer answers replayed_nonce).
    (
        """CREATE TABLE archived_nonces (
            address TEXT NOT NULL,
            nonce   TEXT NOT NULL,
            bet_id  TEXT NOT NULL,
            PRIMARY KEY (address, nonce)
        ) WITHOUT ROWID""",
        """CREATE TRIGGER bets_nonce_not_archived BEFORE INSERT ON bets
            WHEN EXISTS (SELECT 1 FROM archived_nonces
                         WHERE address = NEW.address AND nonce = NEW.nonce)
            BEGIN SELECT RAISE(ABORT, 'nonce archived: replayed_nonce'); END""",
    ),
    # 4: per-cell liability, the sum of potential payouts of the open bets on each cell, kept in
    # step by the writer in each batch's transaction (so several writers on one file agree) and
    # recomputed from the open bets whenever a writer starts (`write.rebuild_cell_liability`).
    (
        """CREATE TABLE cell_liability (
            cell_id TEXT PRIMARY KEY,
            total   INTEGER NOT NULL
        ) WITHOUT ROWID""",
    ),
)

LATEST = len(MIGRATIONS)


class SchemaTooNew(RuntimeError):
    """The file was migrated by a newer tap; running older code on it could corrupt it."""


def schema_version(conn: sqlite3.Connection) -> int:
    """The last migration applied to this database (0 for a new file)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if exists is None:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every pending migration atomically; return the version now in force.

    Idempotent: on an up-to-date file it takes the write lock, sees nothing to do and commits.
    `conn` must be in autocommit mode (`isolation_level=None`, as `connect.open_connection` makes
    it) and outside a transaction.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = schema_version(conn)
        if current > LATEST:
            raise SchemaTooNew(f"database is at schema {current}, this code knows {LATEST}")
        for version in range(current + 1, LATEST + 1):
            for statement in MIGRATIONS[version - 1]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return LATEST
