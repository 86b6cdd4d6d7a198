"""The generator's view of the server's answers and of the market it bets on.

It decides how the load generator reads what tap sends (permissive views of API.md's shapes:
unknown fields are ignored so an additive change on the server never breaks a benchmark) and
which cells are worth signing a bet for: placeable in the newest grid *and* far enough ahead that
they are still placeable when the bet arrives, a second or two after it was signed. It leaves
the choice of which user bets on which cell to `loadgen.generator.vu`.

Request bodies are encoded with tap's own Structs (`tap.messages`), so a renamed field fails
here first; answers are decoded with the light views below, which cost less per frame.
"""

from __future__ import annotations

import msgspec

# ── views of server answers (unknown fields ignored) ────────────────────────────────────────


class MarketSpec(msgspec.Struct, kw_only=True):
    symbol: str
    column_ms: int = 5000
    row_height: int = 1000
    columns_ahead: int = 12
    rows: int = 16
    lockout_columns: int = 1
    min_multiplier_bps: int = 10_500
    min_stake: int = 100_000
    max_stake: int = 100_000_000


class MarketList(msgspec.Struct):
    markets: list[MarketSpec]


class CellView(msgspec.Struct, kw_only=True):
    cell_id: str
    t_start: int
    t_end: int
    multiplier_bps: int = 0
    placeable: bool = True


class GridView(msgspec.Struct, kw_only=True):
    symbol: str
    as_of: int
    price: int
    breaker: str = "closed"
    cells: list[CellView] = msgspec.field(default_factory=list)


class ErrorView(msgspec.Struct, kw_only=True):
    code: str
    message: str = ""


class ErrorBodyView(msgspec.Struct):
    error: ErrorView


class BetView(msgspec.Struct, kw_only=True):
    bet_id: str
    status: str = ""
    cell_id: str = ""
    reason: str | None = None


class ChallengeView(msgspec.Struct, kw_only=True):
    nonce: str
    domain: str
    uri: str
    chain_id: int
    issued_at: str
    expiration_time: str | None = None


class LoginView(msgspec.Struct, kw_only=True):
    token: str
    address: str = ""


class Frame(msgspec.Struct, kw_only=True):
    """Any server → client WebSocket frame; which fields are set depends on `type`."""

    type: str
    req_id: str | None = None
    bet: BetView | None = None
    reason: str | None = None
    error: ErrorView | None = None
    symbol: str | None = None
    ts: int | None = None  # price
    price: int | None = None  # price, grid
    as_of: int | None = None  # grid
    breaker: str | None = None  # grid
    cells: list[CellView] | None = None  # grid
    state: str | None = None  # breaker


frame_decoder = msgspec.json.Decoder(Frame)
bet_decoder = msgspec.json.Decoder(BetView)
error_decoder = msgspec.json.Decoder(ErrorBodyView)


def error_code(body: bytes) -> str:
    """The `error.code` of an API error body, or a label saying the body had none."""
    try:
        return error_decoder.decode(body).error.code
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "unparsable_error_body"


# ── the market the users bet on ──────────────────────────────────────────────────────────────


def _row_of(cell_id: str) -> int:
    """The row of a `"{symbol}:{col}:{row}"` cell id."""
    return int(cell_id.rsplit(":", 1)[1])


class MarketView:
    """The newest grid seen (over the WebSocket or HTTP) and the cells worth betting on."""

    def __init__(self, spec: MarketSpec, *, margin_ms: int = 2000, columns: int = 0) -> None:
        self.spec = spec
        # Tap only the first `columns` placeable columns (0: any). A bet settles at its
        # column's end, so this bounds how long after placing it a bet brings its settlement
        # (`settle_horizon_ms`): what a steady-state measurement must wait out.
        self.columns = columns
        # A signed bet may wait this long before it is sent; past it the cell may have rolled
        # into the lockout and the bet would be refused as not placeable.
        self.margin_ms = margin_ms
        self.as_of = 0
        self.breaker = "closed"
        self._cells: list[CellView] = []
        self._ids: frozenset[str] = frozenset()
        self.updates = 0

    def update(self, as_of: int, cells: list[CellView], breaker: str | None = None) -> None:
        """Take a new grid, keeping the cells that will most likely still take a bet a second
        from now: placeable, not in the two top or bottom rows (the published rows follow the
        price, so edge rows drop out when it moves — about a row a second at σ = 0.6) and priced
        clear of the minimum multiplier (a cell near the price creeps under it as its window
        approaches)."""
        if as_of < self.as_of:
            return  # an older grid overtaken by a newer one
        self.as_of = as_of
        rows = [_row_of(c.cell_id) for c in cells]
        lo, hi = (min(rows), max(rows)) if rows else (0, 0)
        floor = self.spec.min_multiplier_bps * 11 // 10
        self._cells = [
            c
            for c, row in zip(cells, rows, strict=True)
            if c.placeable and lo + 1 < row < hi - 1 and c.multiplier_bps >= floor
        ]
        self._ids = frozenset(c.cell_id for c in self._cells)
        if breaker is not None:
            self.breaker = breaker
        self.updates += 1

    def earliest_start_ms(self, now_ms: int) -> int:
        """A cell starting at or after this is still placeable `margin_ms` from now.

        Placeable means col ≥ c + 1 + lockout_columns for the current column c; `margin_ms`
        later the current column may have moved on, hence the extra column's worth of slack.
        """
        s = self.spec
        col_now = (now_ms + self.margin_ms) // s.column_ms
        return (col_now + 1 + s.lockout_columns) * s.column_ms

    def candidates(self, now_ms: int) -> list[CellView]:
        """Placeable cells of the newest grid that stay placeable for `margin_ms`."""
        earliest = self.earliest_start_ms(now_ms)
        if self.columns > 0:
            latest = earliest + self.columns * self.spec.column_ms
            return [c for c in self._cells if earliest <= c.t_start < latest]
        return [c for c in self._cells if c.t_start >= earliest]

    def settle_horizon_ms(self) -> int:
        """The longest a bet from `candidates` can wait for its column's end: the bet is signed
        at most `margin_ms` before its cell's column must still be ahead of the lockout, and
        its cell ends at most `1 + lockout_columns + columns` columns after that."""
        s = self.spec
        ahead = self.columns if self.columns > 0 else s.columns_ahead
        return self.margin_ms + (1 + s.lockout_columns + ahead) * s.column_ms

    def still_placeable(self, cell_id: str, t_start: int, now_ms: int) -> bool:
        """Still worth sending: in the newest grid's good cells, and not yet in the lockout."""
        s = self.spec
        return (
            cell_id in self._ids
            and t_start >= ((now_ms // s.column_ms) + 1 + s.lockout_columns) * s.column_ms
        )
