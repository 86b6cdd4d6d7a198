// The page: wires the board, the WebSocket, the wallet and the account panel together.
//
// Every bet status shown comes from the server (WS account frames or an HTTP resync), never
// guessed: a tap shows "pending" until `bet_ack`/`bet_confirmed`/`bet_rejected`/`error` says
// otherwise, and the outcome only from `bet_resolved`.
import * as api from './api.js';
import { Board } from './board.js';
import { Feed } from './feed.js';
import * as fmt from './format.js';
import * as wallet from './wallet.js';

const $ = (id) => document.getElementById(id);
const DEV_CHAIN_ID = 31337;
const TEST_DEPOSIT = 100_000_000; // 100.00
// Slippage guard (min_multiplier_bps): refuse the bet if the quote fell more than 25 % below the
// one tapped. Quotes shown are up to a second old (grid frames come at 1 Hz) and near-term cells
// re-price fast, so a tight guard would refuse many honest taps; a loose one still stops a bet
// from going through at a quote far worse than the player saw.
const SLIPPAGE = 0.75;
const RANK = { pending: 0, confirmed: 1, rejected: 2, won: 2, lost: 2, void: 2 };
const MAX_BETS = 300;

const state = {
  config: null,
  market: null,
  session: null, // {token, address, secret, publicHex, expires_at, chain_id, wallet}
  wallet: null,
  bets: new Map(), // nonce → record
  stake: 0,
  breaker: { state: 'closed', reason: '' },
  relogging: false,
};

// Server time, estimated from tick and grid timestamps: a sample (ts − Date.now() at receipt)
// undershoots by the delivery latency, so the largest recent sample is the best estimate.
const clock = {
  offset: 0,
  samples: [],
  now() {
    return Date.now() + this.offset;
  },
  observe(serverMs) {
    this.samples.push(serverMs - Date.now());
    if (this.samples.length > 40) this.samples.shift();
    this.offset = Math.max(...this.samples);
  },
};

const reducedMotion = window.matchMedia('(prefers-reduced-motion: reduce)');
let board;
let feed;

// ── UI helpers ────────────────────────────────────────────────────────────────────────────────

let noticeTimer = 0;
function notice(text) {
  const el = $('notice');
  el.textContent = text;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => {
    el.textContent = '';
  }, 6000);
}

function setConn(s, detail) {
  if (board) board.offline = s === 'offline';
  const el = $('conn');
  el.dataset.state = s;
  el.textContent = s === 'live' ? 'live' : s === 'connecting' ? 'connecting…' : `offline — ${detail}`;
}

function setBreaker(s, reason) {
  state.breaker = { state: s, reason: reason || state.breaker.reason };
  const open = s === 'open';
  board.paused = open;
  $('paused').hidden = !open;
  if (open) $('paused-text').textContent = pausedText(state.breaker.reason);
}

function pausedText(reason) {
  if (reason === 'jump') return 'Betting paused: the price jumped';
  if (reason === 'override') return 'Betting paused by the operator';
  return 'Betting paused: price feed stale';
}

function setBalance(b) {
  if (!b) return;
  $('available').textContent = fmt.money(b.available);
  $('locked').textContent = fmt.money(b.locked);
}

function describeCell(cell) {
  if (!cell || !state.market) return '';
  const m = state.market;
  const [, col, row] = cell.cell_id.split(':').map(Number);
  const lo = fmt.price(row * m.row_height, m.price_scale);
  const hi = fmt.price((row + 1) * m.row_height, m.price_scale);
  const inS = Math.round((col * m.column_ms - clock.now()) / 1000);
  return `${lo}–${hi}, window starts in ${inS} s, pays ${fmt.multiplier(cell.multiplier_bps)}`;
}

// ── account ───────────────────────────────────────────────────────────────────────────────────

function renderAccount() {
  const s = state.session;
  $('signed-out').hidden = Boolean(s);
  $('signed-in').hidden = !s;
  if (s) {
    $('address').textContent = wallet.toChecksumAddress(s.address);
    $('wallet-kind').textContent = s.wallet === 'dev' ? 'dev wallet' : 'wallet';
    $('deposit').hidden = !state.config.mock_deposits;
  }
  const devAllowed = state.config.chain_id === DEV_CHAIN_ID && state.config.mock_deposits;
  const injected = Boolean(window.ethereum);
  $('login-injected').hidden = !injected;
  $('dev-box').hidden = injected || !devAllowed;
  $('no-wallet').hidden = injected || devAllowed;
  $('login-hint').hidden = !injected && !devAllowed;
}

async function login(w) {
  const key = wallet.newSessionKey();
  const ch = await api.post('/api/auth/challenge', { address: w.address });
  const message = wallet.siweMessage(ch, w.address, key.publicHex);
  const signature = await w.signMessage(message);
  const s = await api.post('/api/auth/login', { message, signature });
  state.wallet = w;
  state.session = {
    token: s.token,
    address: s.address,
    secret: key.secret,
    publicHex: key.publicHex,
    expires_at: s.expires_at,
    chain_id: ch.chain_id,
    wallet: w.kind,
  };
  wallet.saveSession(state.session);
  feed.authenticate(s.token);
  renderAccount();
  await resync();
}

async function loginWith(getWallet) {
  try {
    await login(await getWallet());
  } catch (err) {
    notice(`Sign-in failed: ${err.message || err}`);
  }
}

/** The server no longer accepts our token (it expired, or the server's session secret changed). */
async function sessionLost() {
  if (state.relogging || !state.session) return;
  state.relogging = true;
  try {
    const w = state.session.wallet === 'dev' ? wallet.devWallet({ create: false }) : null;
    wallet.clearSession();
    if (w) {
      await login(w); // the dev wallet can sign again without asking anyone
      notice('Session renewed.');
    } else {
      state.session = null;
      feed.signOut();
      renderAccount();
      notice('Your session ended: sign in again.');
    }
  } catch (err) {
    state.session = null;
    renderAccount();
    notice(`Session ended: ${err.message || err}`);
  } finally {
    state.relogging = false;
  }
}

async function authed(method, path, body) {
  try {
    return await api.call(method, path, { token: state.session.token, body });
  } catch (err) {
    if (err.status === 401) sessionLost();
    throw err;
  }
}

/** Balance and bets over HTTP: after login and after every reconnect (frames may be lost). */
async function resync() {
  if (!state.session) return;
  try {
    const [balance, list] = await Promise.all([
      authed('GET', '/api/balance'),
      authed('GET', '/api/bets?limit=50'),
    ]);
    setBalance(balance);
    const seen = new Set();
    for (const bet of list.items.slice().reverse()) {
      applyBet(bet);
      seen.add(bet.nonce);
    }
    // A tap still pending that the server has no trace of never reached it.
    for (const rec of state.bets.values()) {
      if (rec.status !== 'pending' || seen.has(rec.nonce)) continue;
      try {
        applyBet(await authed('GET', `/api/bets/by-nonce/${encodeURIComponent(rec.nonce)}`));
      } catch (err) {
        if (err.status === 404) settle(rec, 'rejected', 'lost_connection');
      }
    }
    renderHistory();
  } catch (err) {
    if (err.status !== 401) notice(`Could not refresh the account: ${err.message}`);
  }
}

// ── bets ──────────────────────────────────────────────────────────────────────────────────────

function applyBet(bet, reason) {
  if (!bet || typeof bet.nonce !== 'string') return;
  let rec = state.bets.get(bet.nonce);
  if (!rec) {
    rec = { nonce: bet.nonce, status: 'pending', placed_at: bet.accepted_at };
    state.bets.set(bet.nonce, rec);
  }
  if (RANK[bet.status] < RANK[rec.status]) return; // never step back (a late or resynced frame)
  Object.assign(rec, {
    bet_id: bet.bet_id,
    cell_id: bet.cell_id,
    amount: bet.amount,
    multiplier_bps: bet.multiplier_bps,
    status: bet.status,
    payout: bet.payout,
    decided_by: bet.decided_by,
    reason: reason || bet.reason,
  });
  if (bet.status === 'rejected') forgetLater(rec);
  trimBets();
  scheduleHistory();
}

function settle(rec, status, reason) {
  rec.status = status;
  rec.reason = reason;
  if (status === 'rejected') forgetLater(rec);
  scheduleHistory();
}

function forgetLater(rec) {
  // A refused tap shows its reason on the cell for a few seconds, then frees the cell.
  setTimeout(() => {
    rec.hidden = true;
  }, 4000);
}

function trimBets() {
  if (state.bets.size <= MAX_BETS) return;
  const done = [...state.bets.values()].filter((r) => RANK[r.status] === 2);
  done.sort((a, b) => a.placed_at - b.placed_at);
  for (const r of done.slice(0, state.bets.size - MAX_BETS)) state.bets.delete(r.nonce);
}

function tap(cell) {
  const m = state.market;
  const s = state.session;
  if (!s) return notice('Sign in to place bets.');
  if (state.breaker.state === 'open') return notice(`${pausedText(state.breaker.reason)}: tap refused.`);
  if (!feed.open) return notice('Offline: reconnecting to the server…');
  const col = Number(cell.cell_id.split(':')[1]);
  const current = Math.floor(clock.now() / m.column_ms);
  if (!cell.placeable || col <= current + m.lockout_columns) return notice('That cell is closed.');
  if (cell.multiplier_bps < m.min_multiplier_bps) return notice('That cell pays below the minimum.');
  for (const r of state.bets.values()) {
    if (r.cell_id === cell.cell_id && (r.status === 'pending' || r.status === 'confirmed')) {
      return notice('You already have a bet on that cell.');
    }
  }
  for (const r of state.bets.values()) {
    if (r.cell_id === cell.cell_id && r.status === 'rejected') r.hidden = true; // the new tap shows
  }
  const fields = {
    cell_id: cell.cell_id,
    amount: state.stake,
    nonce: wallet.newNonce(),
    timestamp: Math.round(clock.now()),
    chain_id: s.chain_id,
    min_multiplier_bps: Math.floor(cell.multiplier_bps * SLIPPAGE),
    address: s.address,
  };
  const signature = wallet.signBet(s.secret, fields);
  const rec = {
    nonce: fields.nonce,
    cell_id: cell.cell_id,
    amount: fields.amount,
    multiplier_bps: cell.multiplier_bps,
    status: 'pending',
    placed_at: fields.timestamp,
  };
  state.bets.set(rec.nonce, rec);
  const { address, ...body } = fields;
  void address;
  feed.send({ type: 'place_bet', req_id: rec.nonce, ...body, signature });
  $('cell-info').textContent = `Bet sent: ${fmt.money(rec.amount)} on ${describeCell(cell)}`;
  renderHistory(); // now, not on the next frame: "pending" shows before any answer can arrive
  // No answer at all (the socket died with the frame in flight)? Ask over HTTP.
  setTimeout(() => {
    if (rec.status === 'pending') resync();
  }, 10_000);
}

// ── WebSocket frames ──────────────────────────────────────────────────────────────────────────

function onFrame(f) {
  switch (f.type) {
    case 'price':
      if (f.symbol !== state.market.symbol) return;
      clock.observe(f.ts);
      board.addTick(f.ts, f.price);
      $('price').textContent = fmt.price(f.price, state.market.price_scale);
      return;
    case 'grid':
      if (f.symbol !== state.market.symbol) return;
      clock.observe(f.as_of);
      board.setGrid(f);
      if (f.breaker !== state.breaker.state) setBreaker(f.breaker, '');
      return;
    case 'breaker':
      setBreaker(f.state, f.reason);
      return;
    case 'bet_ack':
      applyBet(f.bet);
      return;
    case 'bet_confirmed':
    case 'bet_resolved':
      applyBet(f.bet);
      if (f.balance) setBalance(f.balance);
      if (f.type === 'bet_resolved') announceOutcome(f.bet);
      return;
    case 'bet_rejected':
      applyBet(f.bet, f.reason);
      if (f.balance) setBalance(f.balance);
      notice(`Bet refused: ${fmt.reason(f.reason)}`);
      return;
    case 'balance':
      setBalance(f);
      return;
    case 'error':
      onError(f);
      return;
    default:
  }
}

function onError(f) {
  const code = (f.error && f.error.code) || 'error';
  const rec = f.req_id ? state.bets.get(f.req_id) : null;
  if (rec) {
    if (rec.status === 'pending') settle(rec, 'rejected', code);
    notice(`Bet refused: ${fmt.reason(code)}`);
  }
  if (code === 'unauthorized') sessionLost();
  else if (!rec) notice(`Server: ${(f.error && f.error.message) || code}`);
}

function announceOutcome(bet) {
  if (bet.status === 'won') notice(`Won ${fmt.money(bet.payout)}!`);
  else if (bet.status === 'void') notice('Bet void (price feed gap): stake refunded.');
}

// ── history ───────────────────────────────────────────────────────────────────────────────────

let historyQueued = false;
function scheduleHistory() {
  if (historyQueued) return;
  historyQueued = true;
  requestAnimationFrame(() => {
    historyQueued = false;
    renderHistory();
  });
}

function renderHistory() {
  const list = $('history');
  const m = state.market;
  const recs = [...state.bets.values()].sort((a, b) => b.placed_at - a.placed_at).slice(0, 40);
  const items = recs.map((r) => {
    const li = document.createElement('li');
    li.dataset.status = r.status;
    li.dataset.nonce = r.nonce;
    const row = Number(r.cell_id.split(':')[2]);
    const when = document.createElement('span');
    when.className = 'when mono';
    when.textContent = fmt.clock(r.placed_at);
    const what = document.createElement('span');
    what.className = 'what';
    what.textContent =
      `${fmt.money(r.amount)} @ ${fmt.multiplier(r.multiplier_bps)} · ` +
      `${fmt.price(row * m.row_height, m.price_scale)}`;
    const st = document.createElement('span');
    st.className = 'st';
    st.textContent =
      r.status === 'won'
        ? `won +${fmt.money(r.payout)}`
        : r.status === 'rejected'
          ? fmt.reason(r.reason)
          : r.status;
    li.append(when, what, st);
    return li;
  });
  list.replaceChildren(...items);
  $('history-empty').hidden = items.length > 0;
}

// ── start ─────────────────────────────────────────────────────────────────────────────────────

function renderStakes() {
  const box = $('stakes');
  const presets = state.market.stake_presets;
  state.stake = presets[0];
  const buttons = presets.map((amount, i) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.setAttribute('role', 'radio');
    b.setAttribute('aria-checked', i === 0 ? 'true' : 'false');
    b.tabIndex = i === 0 ? 0 : -1;
    b.textContent = fmt.money(amount);
    b.dataset.amount = String(amount);
    b.addEventListener('click', () => pickStake(i));
    b.addEventListener('keydown', (e) => {
      const d = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[e.key];
      if (!d) return;
      e.preventDefault();
      pickStake((i + d + presets.length) % presets.length, true);
    });
    return b;
  });
  box.replaceChildren(...buttons);
  function pickStake(i, focus) {
    state.stake = presets[i];
    buttons.forEach((b, j) => {
      b.setAttribute('aria-checked', j === i ? 'true' : 'false');
      b.tabIndex = j === i ? 0 : -1;
    });
    if (focus) buttons[i].focus();
  }
}

async function loadHistoryTicks() {
  const now = Date.now();
  try {
    const r = await api.get(
      `/api/prices/${encodeURIComponent(state.market.symbol)}?from=${now - 60_000}&limit=1000`,
    );
    for (const t of r.ticks) board.addTick(t.ts, t.price);
    if (r.ticks.length) clock.observe(r.ticks[r.ticks.length - 1].ts);
  } catch {
    // the live feed fills the line anyway
  }
}

async function main() {
  const [config, markets] = await Promise.all([api.get('/api/config'), api.get('/api/markets')]);
  state.config = config;
  state.market = markets.markets[0];
  $('symbol').textContent = state.market.symbol;
  document.title = `tap — ${state.market.symbol}`;
  board = new Board($('board'), {
    clock,
    reducedMotion,
    onTap: tap,
    onFocus: (cell) => {
      $('cell-info').textContent = cell ? describeCell(cell) : '';
    },
  });
  board.setMarket(state.market);
  board.bets = state.bets; // drawn as they are: one record per bet, updated in place
  renderStakes();
  feed = new Feed({
    symbol: state.market.symbol,
    onFrame,
    onState: setConn,
    onOpen: (reconnected) => {
      if (reconnected) resync();
    },
  });

  $('login-dev').addEventListener('click', () => loginWith(async () => wallet.devWallet({ create: true })));
  $('login-injected').addEventListener('click', () =>
    loginWith(() => wallet.injectedWallet(window.ethereum)),
  );
  $('logout').addEventListener('click', () => {
    wallet.clearSession();
    state.session = null;
    feed.signOut();
    renderAccount();
  });
  $('deposit').addEventListener('click', async () => {
    const amount = Math.min(TEST_DEPOSIT, state.config.max_deposit);
    try {
      await authed('POST', '/api/deposits', { amount });
      notice(`Deposited ${fmt.money(amount)} test funds.`);
      setBalance(await authed('GET', '/api/balance'));
    } catch (err) {
      notice(`Deposit failed: ${err.message}`);
    }
  });

  const saved = wallet.loadSession(Date.now());
  if (saved && saved.chain_id === config.chain_id) {
    state.session = saved;
    feed.token = saved.token;
  }
  renderAccount();
  await loadHistoryTicks();
  feed.start();
  if (state.session) resync();

  const frame = (t) => {
    board.draw(t);
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
}

main().catch((err) => {
  notice(`The game could not start: ${err.message || err}`);
  setConn('offline', 'start failed');
});
