// The one WebSocket to /ws: market data for everyone, account frames and bets once authed.
// Reconnects by itself with exponential backoff and full jitter (so a restarted server is not
// hit by every client at the same instant); the caller resyncs over HTTP after each reconnect,
// which is what a 1013 close ("you fell behind, account frames may be lost") asks for.

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 15_000;

export class Feed {
  constructor({ symbol, onFrame, onState, onOpen }) {
    this.symbol = symbol;
    this.onFrame = onFrame;
    this.onState = onState; // ('connecting' | 'live' | 'offline', detail)
    this.onOpen = onOpen; // (reconnected: boolean, closeCode: number | null)
    this.ws = null;
    this.token = null;
    this.attempt = 0;
    this.lastClose = null;
    this.everOpened = false;
    this.timer = null;
    this.stopped = false;
  }

  get open() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  connect() {
    clearTimeout(this.timer);
    this.onState('connecting', this.attempt ? `retry ${this.attempt}` : '');
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(`${scheme}://${location.host}/ws`);
    this.ws = ws;
    ws.onopen = () => {
      const reconnected = this.everOpened;
      this.everOpened = true;
      this.send({ type: 'subscribe', channels: [`prices:${this.symbol}`, `grid:${this.symbol}`] });
      if (this.token) this.authenticate(this.token);
      this.onState('live', '');
      this.onOpen(reconnected, this.lastClose);
    };
    ws.onmessage = (event) => {
      if (typeof event.data !== 'string') return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame && typeof frame.type === 'string') {
        this.attempt = 0; // the server talks to us: the next drop starts the backoff afresh
        this.onFrame(frame);
      }
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.lastClose = event.code;
      if (this.stopped) return;
      const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
      const delay = Math.round(cap / 2 + Math.random() * (cap / 2));
      this.attempt += 1;
      this.onState('offline', `code ${event.code}; reconnecting in ${(delay / 1000).toFixed(1)} s`);
      this.timer = setTimeout(() => this.connect(), delay);
    };
    ws.onerror = () => {}; // onclose follows and handles it
  }

  /** Bind this connection (and every reconnection) to a session and its account frames. */
  authenticate(token) {
    this.token = token;
    if (!this.open) return;
    this.send({ type: 'auth', token });
    this.send({ type: 'subscribe', channels: ['account'] });
  }

  signOut() {
    this.token = null;
    if (this.open) this.send({ type: 'unsubscribe', channels: ['account'] });
  }

  send(frame) {
    if (!this.open) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }
}
