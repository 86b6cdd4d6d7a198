// The board: a canvas with the live price line scrolling left and the grid of cells ahead of it.
//
// Time runs left to right in server time (the clock's estimate); "now" sits at a fixed x. Ticks
// arrive about 4 times a second; the line is drawn `delay` behind the newest tick and
// interpolated between ticks, so it moves smoothly at the display's frame rate. Interpolation is
// for display only: what a bet wins on is decided by the server from the real ticks.
import * as fmt from './format.js';

const COLORS = {
  bg: '#0e1220',
  past: '#0a0d17',
  locked: 'rgba(120, 130, 160, 0.13)',
  gridLine: '#1d2436',
  text: '#d5dbea',
  dim: '#566077',
  line: '#f5b942',
  head: '#ffd777',
  focus: '#ffffff',
  pending: '#8fb0ff',
  confirmed: '#4d7cff',
  won: '#2fd07a',
  lost: '#7b8496',
  void: '#b0b4c0',
  rejected: '#ff6161',
  paused: 'rgba(10, 13, 23, 0.55)',
};
const MIN_COL_PX = 58;
const TIME_AXIS_PX = 18;

export class Board {
  constructor(canvas, { clock, onTap, onFocus, reducedMotion }) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d', { alpha: false });
    this.clock = clock;
    this.onTap = onTap;
    this.onFocus = onFocus;
    this.reducedMotion = reducedMotion;
    this.market = null;
    this.grid = null;
    this.cells = new Map(); // cell_id → grid cell
    this.ticks = []; // [{ts, price}] ascending
    this.bets = new Map(); // nonce → bet record (owned by main.js)
    this.paused = false;
    this.offline = false;
    this.focus = null; // {col, row}
    this.hover = null;
    this.yLo = null;
    this.yHi = null;
    this.tickGap = 250;
    this.frames = 0;
    this.layout = null;
    canvas.addEventListener('pointerdown', (e) => this.pointer(e));
    canvas.addEventListener('pointermove', (e) => {
      this.hover = this.cellAt(e.offsetX, e.offsetY);
    });
    canvas.addEventListener('pointerleave', () => {
      this.hover = null;
    });
    canvas.addEventListener('keydown', (e) => this.key(e));
    canvas.addEventListener('focus', () => {
      this.focus = null; // start at the price, in the first open column
      this.ensureFocus(true);
    });
  }

  setMarket(m) {
    this.market = m;
  }

  setGrid(grid) {
    this.grid = grid;
    this.cells = new Map(grid.cells.map((c) => [c.cell_id, c]));
    this.ensureFocus(false);
  }

  addTick(ts, price) {
    const t = this.ticks;
    const last = t[t.length - 1];
    if (last && ts <= last.ts) {
      if (ts === last.ts) last.price = price;
      return;
    }
    if (last) this.tickGap = this.tickGap * 0.9 + Math.min(1000, ts - last.ts) * 0.1;
    t.push({ ts, price });
    if (t.length > 4000) t.splice(0, t.length - 3000);
  }

  // ── geometry ────────────────────────────────────────────────────────────────────────────

  currentColumn() {
    return Math.floor(this.clock.now() / this.market.column_ms);
  }

  placeableCols() {
    const c = this.currentColumn();
    const m = this.market;
    return [c + 1 + m.lockout_columns, c + m.columns_ahead];
  }

  computeLayout() {
    const cssW = this.canvas.clientWidth;
    const cssH = this.canvas.clientHeight;
    const dpr = Math.min(2, window.devicePixelRatio || 1);
    if (this.canvas.width !== Math.round(cssW * dpr) || this.canvas.height !== Math.round(cssH * dpr)) {
      this.canvas.width = Math.round(cssW * dpr);
      this.canvas.height = Math.round(cssH * dpr);
    }
    const m = this.market;
    const xNow = Math.round(cssW * (cssW < 560 ? 0.22 : 0.3));
    // Columns ahead that fit at a readable width (fewer on a phone), plus the current one.
    const cols = Math.max(3, Math.min(m.columns_ahead + 1, Math.floor((cssW - xNow) / MIN_COL_PX)));
    const pxPerMs = (cssW - xNow) / (cols * m.column_ms);
    const delay = Math.min(1000, this.tickGap * 1.25 + 40);
    const tDisp = this.clock.now() - delay;
    const plotH = cssH - TIME_AXIS_PX;
    return { cssW, cssH, dpr, xNow, pxPerMs, tDisp, plotH, cols };
  }

  xOf(t) {
    const L = this.layout;
    return L.xNow + (t - L.tDisp) * L.pxPerMs;
  }

  tOf(x) {
    const L = this.layout;
    return L.tDisp + (x - L.xNow) / L.pxPerMs;
  }

  yOf(p) {
    const L = this.layout;
    return ((this.yHi - p) / (this.yHi - this.yLo)) * L.plotH;
  }

  pOf(y) {
    const L = this.layout;
    return this.yHi - (y / L.plotH) * (this.yHi - this.yLo);
  }

  cellAt(x, y) {
    if (!this.layout || !this.market) return null;
    const col = Math.floor(this.tOf(x) / this.market.column_ms);
    const row = Math.floor(this.pOf(y) / this.market.row_height);
    return this.cells.get(`${this.market.symbol}:${col}:${row}`) || null;
  }

  cellRect(col, row) {
    const m = this.market;
    const x0 = this.xOf(col * m.column_ms);
    const x1 = this.xOf((col + 1) * m.column_ms);
    const y0 = this.yOf((row + 1) * m.row_height);
    const y1 = this.yOf(row * m.row_height);
    return [x0, y0, x1 - x0, y1 - y0];
  }

  priceAt(t) {
    const ticks = this.ticks;
    for (let i = ticks.length - 1; i >= 0; i--) {
      if (ticks[i].ts <= t) {
        const a = ticks[i];
        const b = ticks[i + 1];
        if (!b) return a.price;
        return a.price + ((b.price - a.price) * (t - a.ts)) / (b.ts - a.ts);
      }
    }
    return ticks.length ? ticks[0].price : null;
  }

  // ── input ───────────────────────────────────────────────────────────────────────────────

  pointer(e) {
    if (e.button !== undefined && e.button !== 0) return;
    const cell = this.cellAt(e.offsetX, e.offsetY);
    if (!cell) return;
    const [, col, row] = cell.cell_id.split(':');
    this.focus = { col: Number(col), row: Number(row) };
    this.onTap(cell);
  }

  rowRange() {
    if (!this.grid || !this.grid.cells.length) return null;
    let lo = Infinity;
    let hi = -Infinity;
    for (const c of this.grid.cells) {
      const row = Math.floor(c.price_lo / this.market.row_height);
      lo = Math.min(lo, row);
      hi = Math.max(hi, row);
    }
    return [lo, hi];
  }

  /** Keep the keyboard focus on a cell that can still take a bet; start near the price. */
  ensureFocus(announce) {
    if (!this.market || !this.grid) return;
    const [c0, c1] = this.placeableCols();
    const rows = this.rowRange();
    if (!rows) return;
    const before = this.focus && `${this.focus.col}:${this.focus.row}`;
    if (!this.focus) {
      const p = this.ticks.length ? this.ticks[this.ticks.length - 1].price : this.grid.price;
      this.focus = { col: c0, row: Math.floor(p / this.market.row_height) };
    }
    this.focus.col = Math.min(c1, Math.max(c0, this.focus.col));
    this.focus.row = Math.min(rows[1], Math.max(rows[0], this.focus.row));
    const moved = before !== `${this.focus.col}:${this.focus.row}`;
    // Told (a live region reads it out) when the player moved, or time moved a focus they hold.
    if (announce || (moved && document.activeElement === this.canvas)) {
      this.onFocus(this.focusedCell());
    }
  }

  focusedCell() {
    if (!this.focus || !this.market) return null;
    return this.cells.get(`${this.market.symbol}:${this.focus.col}:${this.focus.row}`) || null;
  }

  key(e) {
    if (!this.focus) this.ensureFocus(false);
    if (!this.focus) return;
    const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, 1], ArrowDown: [0, -1] };
    if (moves[e.key]) {
      e.preventDefault();
      this.focus.col += moves[e.key][0];
      this.focus.row += moves[e.key][1];
      this.ensureFocus(true);
    } else if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      const cell = this.focusedCell();
      if (cell) this.onTap(cell);
    }
  }

  // ── drawing ─────────────────────────────────────────────────────────────────────────────

  draw(wallMs) {
    this.frames += 1;
    if (!this.market || this.canvas.clientWidth === 0) return;
    const L = (this.layout = this.computeLayout());
    const ctx = this.ctx;
    const m = this.market;
    ctx.setTransform(L.dpr, 0, 0, L.dpr, 0, 0);
    ctx.fillStyle = COLORS.bg;
    ctx.fillRect(0, 0, L.cssW, L.cssH);
    ctx.fillStyle = COLORS.past;
    ctx.fillRect(0, 0, L.xNow, L.plotH);

    // Vertical range: the published rows, eased toward when they shift (jump if reduced motion).
    const rows = this.rowRange();
    const last = this.ticks.length ? this.ticks[this.ticks.length - 1].price : null;
    let lo;
    let hi;
    if (rows) {
      lo = rows[0] * m.row_height;
      hi = (rows[1] + 1) * m.row_height;
    } else if (last !== null) {
      lo = last - (m.rows / 2) * m.row_height;
      hi = last + (m.rows / 2) * m.row_height;
    } else {
      this.drawMessage(ctx, L, 'waiting for prices…');
      return;
    }
    if (this.yLo === null || this.reducedMotion.matches) {
      this.yLo = lo;
      this.yHi = hi;
    } else {
      this.yLo += (lo - this.yLo) * 0.08;
      this.yHi += (hi - this.yHi) * 0.08;
    }

    const c = this.currentColumn();
    const lockedEnd = (c + 1 + m.lockout_columns) * m.column_ms;
    const colFirst = Math.floor(this.tOf(0) / m.column_ms);
    const colLast = Math.floor(this.tOf(L.cssW) / m.column_ms);

    // Locked columns (the current one and the lockout): shaded.
    const lx0 = Math.max(0, this.xOf(c * m.column_ms));
    ctx.fillStyle = COLORS.locked;
    ctx.fillRect(lx0, 0, this.xOf(lockedEnd) - lx0, L.plotH);

    // Grid lines.
    ctx.strokeStyle = COLORS.gridLine;
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let col = colFirst; col <= colLast + 1; col++) {
      const x = Math.round(this.xOf(col * m.column_ms)) + 0.5;
      ctx.moveTo(x, 0);
      ctx.lineTo(x, L.plotH);
    }
    const rowLo = Math.floor(this.yLo / m.row_height);
    const rowHi = Math.ceil(this.yHi / m.row_height);
    for (let row = rowLo; row <= rowHi; row++) {
      const y = Math.round(this.yOf(row * m.row_height)) + 0.5;
      ctx.moveTo(0, y);
      ctx.lineTo(L.cssW, y);
    }
    ctx.stroke();

    // Cells: the multiplier; dim when locked, below the minimum, or betting is paused.
    const rowPx = (m.row_height / (this.yHi - this.yLo)) * L.plotH;
    const colPx = m.column_ms * L.pxPerMs;
    const fontPx = Math.max(9, Math.min(13, rowPx * 0.5, colPx / 4.2));
    ctx.font = `${fontPx}px system-ui, sans-serif`;
    ctx.textAlign = 'center';
    ctx.textBaseline = 'middle';
    const hoverId = this.hover && this.hover.cell_id;
    const betCells = new Set();
    for (const bet of this.bets.values()) if (!bet.hidden) betCells.add(bet.cell_id);
    for (const cell of this.cells.values()) {
      if (betCells.has(cell.cell_id)) continue; // the bet's own label replaces the quote
      const [, colS, rowS] = cell.cell_id.split(':');
      const col = Number(colS);
      // A quote for a window that has begun is history: not drawn (the last grid may be old).
      if (col <= c || col < colFirst || col > colLast) continue;
      const [x, y, w, h] = this.cellRect(col, Number(rowS));
      if (y + h < 0 || y > L.plotH) continue;
      const open = cell.placeable && col > c + m.lockout_columns && !this.paused && !this.offline;
      const below = cell.multiplier_bps < m.min_multiplier_bps;
      if (open && cell.cell_id === hoverId) {
        ctx.fillStyle = 'rgba(255, 255, 255, 0.07)';
        ctx.fillRect(x + 1, y + 1, w - 1, h - 1);
      }
      ctx.fillStyle = open && !below ? COLORS.text : COLORS.dim;
      ctx.fillText(fmt.multiplier(cell.multiplier_bps), x + w / 2, y + h / 2);
    }

    this.drawBets(ctx, L, colFirst, colLast, fontPx, wallMs);
    this.drawLine(ctx, L);
    this.drawDecidingTicks(ctx);
    this.drawFocus(ctx);

    if (this.paused || this.offline) {
      ctx.fillStyle = COLORS.paused;
      ctx.fillRect(L.xNow, 0, L.cssW - L.xNow, L.plotH);
      if (this.offline) {
        ctx.fillStyle = COLORS.text;
        ctx.font = '600 15px system-ui, sans-serif';
        ctx.fillText('offline — reconnecting…', (L.xNow + L.cssW) / 2, L.plotH / 2);
      }
    }

    // Time axis: seconds until each column starts.
    ctx.fillStyle = COLORS.bg;
    ctx.fillRect(0, L.plotH, L.cssW, TIME_AXIS_PX);
    ctx.fillStyle = COLORS.dim;
    ctx.font = '10px system-ui, sans-serif';
    const now = this.clock.now();
    const every = Math.max(1, Math.ceil(40 / colPx));
    for (let col = colFirst; col <= colLast; col++) {
      if (col % every) continue;
      const t = col * m.column_ms;
      const x = this.xOf(t);
      if (x < 12 || x > L.cssW - 12) continue;
      const s = Math.round((t - now) / 1000);
      ctx.fillText(s === 0 ? 'now' : `${s > 0 ? '+' : ''}${s}s`, x, L.plotH + TIME_AXIS_PX / 2);
    }
  }

  drawMessage(ctx, L, text) {
    ctx.fillStyle = COLORS.dim;
    ctx.font = '14px system-ui, sans-serif';
    ctx.textAlign = 'center';
    ctx.fillText(text, L.cssW / 2, L.cssH / 2);
  }

  drawBets(ctx, L, colFirst, colLast, fontPx, wallMs) {
    const pulse = this.reducedMotion.matches ? 0 : (wallMs / 40) % 16;
    const newest = new Map(); // one label per cell: the latest bet on it
    for (const bet of this.bets.values()) {
      if (bet.hidden || !bet.cell_id) continue;
      const seen = newest.get(bet.cell_id);
      if (!seen || bet.placed_at >= seen.placed_at) newest.set(bet.cell_id, bet);
    }
    for (const bet of newest.values()) {
      const [, colS, rowS] = bet.cell_id.split(':');
      const col = Number(colS);
      if (col < colFirst - 1 || col > colLast) continue;
      const [x, y, w, h] = this.cellRect(col, Number(rowS));
      const color = COLORS[bet.status] || COLORS.pending;
      ctx.save();
      if (bet.status === 'pending') {
        ctx.setLineDash([4, 4]);
        ctx.lineDashOffset = -pulse;
      } else {
        ctx.fillStyle = color;
        ctx.globalAlpha = bet.status === 'lost' || bet.status === 'void' ? 0.18 : 0.32;
        ctx.fillRect(x + 1, y + 1, w - 1, h - 1);
        ctx.globalAlpha = 1;
      }
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.strokeRect(x + 2, y + 2, w - 3, h - 3);
      ctx.restore();
      ctx.fillStyle = bet.status === 'lost' || bet.status === 'void' ? COLORS.text : '#ffffff';
      ctx.font = `600 ${fontPx}px system-ui, sans-serif`;
      ctx.fillText(betLabel(bet), x + w / 2, y + h / 2, w - 4);
    }
  }

  /** The tick that decided each won bet, ringed on the line (drawn over it). */
  drawDecidingTicks(ctx) {
    ctx.strokeStyle = COLORS.won;
    ctx.fillStyle = COLORS.won;
    ctx.lineWidth = 2;
    for (const bet of this.bets.values()) {
      if (bet.status !== 'won' || !bet.decided_by) continue;
      const px = this.xOf(bet.decided_by.ts);
      if (px < -10 || px > this.layout.xNow + 10) continue;
      const py = this.yOf(bet.decided_by.price);
      ctx.beginPath();
      ctx.arc(px, py, 7, 0, Math.PI * 2);
      ctx.stroke();
      ctx.beginPath();
      ctx.arc(px, py, 2.5, 0, Math.PI * 2);
      ctx.fill();
    }
  }

  drawLine(ctx, L) {
    const ticks = this.ticks;
    if (!ticks.length) return;
    const tFrom = this.tOf(-10);
    let i = ticks.length - 1;
    while (i > 0 && ticks[i - 1].ts >= tFrom) i--;
    if (i > 0) i--;
    ctx.strokeStyle = COLORS.line;
    ctx.lineWidth = 2;
    ctx.lineJoin = 'round';
    ctx.beginPath();
    let started = false;
    let prevTs = 0;
    const gap = Math.max(2000, this.tickGap * 4); // no ticks this long: a gap, not a straight line
    for (; i < ticks.length && ticks[i].ts <= L.tDisp; i++) {
      const x = this.xOf(ticks[i].ts);
      const y = this.yOf(ticks[i].price);
      if (started && ticks[i].ts - prevTs <= gap) ctx.lineTo(x, y);
      else ctx.moveTo(x, y);
      started = true;
      prevTs = ticks[i].ts;
    }
    const head = this.priceAt(L.tDisp);
    const hy = this.yOf(head);
    if (started && L.tDisp - prevTs <= gap) ctx.lineTo(L.xNow, hy);
    ctx.stroke();
    ctx.fillStyle = COLORS.head;
    ctx.beginPath();
    ctx.arc(L.xNow, hy, 4, 0, Math.PI * 2);
    ctx.fill();
    // The price at the head: a faint level across the past, and a tag at the left edge (out of
    // the way of the cells next to the head, where a bet is being decided).
    const label = fmt.price(Math.round(head), this.market.price_scale);
    ctx.font = '600 11px system-ui, sans-serif';
    const tw = ctx.measureText(label).width + 10;
    const ty = Math.min(L.plotH - 10, Math.max(10, hy));
    ctx.save();
    ctx.strokeStyle = 'rgba(245, 185, 66, 0.35)';
    ctx.lineWidth = 1;
    ctx.setLineDash([3, 4]);
    ctx.beginPath();
    ctx.moveTo(tw + 2, Math.round(hy) + 0.5);
    ctx.lineTo(L.xNow - 6, Math.round(hy) + 0.5);
    ctx.stroke();
    ctx.restore();
    ctx.fillStyle = COLORS.line;
    ctx.fillRect(2, ty - 9, tw, 18);
    ctx.fillStyle = '#1a1405';
    ctx.textAlign = 'center';
    ctx.fillText(label, 2 + tw / 2, ty);
  }

  drawFocus(ctx) {
    if (!this.focus || document.activeElement !== this.canvas) return;
    const [x, y, w, h] = this.cellRect(this.focus.col, this.focus.row);
    ctx.save();
    ctx.strokeStyle = COLORS.focus;
    ctx.lineWidth = 3;
    ctx.setLineDash([]);
    ctx.strokeRect(x + 1.5, y + 1.5, w - 2, h - 2);
    ctx.restore();
  }
}

function betLabel(bet) {
  switch (bet.status) {
    case 'pending':
      return `${fmt.money(bet.amount)}…`;
    case 'confirmed':
      return `${fmt.money(bet.amount)} ✓`;
    case 'won':
      return `+${fmt.money(bet.payout)}`;
    case 'lost':
      return 'lost';
    case 'void':
      return 'void';
    case 'rejected':
      return fmt.reason(bet.reason);
    default:
      return bet.status;
  }
}
