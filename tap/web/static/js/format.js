// Display formatting only: money is integer units (10⁻⁶), multipliers basis points, prices
// integer increments of the market's price_scale. Nothing here feeds back into a signed value.

export function money(units) {
  const sign = units < 0 ? '−' : '';
  const abs = Math.abs(units);
  const whole = Math.floor(abs / 1_000_000);
  const cents = Math.floor((abs % 1_000_000) / 10_000);
  return `${sign}${whole.toLocaleString('en-US')}.${String(cents).padStart(2, '0')}`;
}

export function multiplier(bps) {
  const x = bps / 10_000;
  if (x >= 100) return `${Math.floor(x)}×`;
  if (x >= 10) return `${(Math.floor(bps / 1000) / 10).toFixed(1)}×`;
  return `${(Math.floor(bps / 100) / 100).toFixed(2)}×`;
}

export function price(increments, scale) {
  const decimals = Math.max(0, Math.round(Math.log10(scale)));
  return (increments / scale).toLocaleString('en-US', {
    minimumFractionDigits: decimals,
    maximumFractionDigits: decimals,
  });
}

export function clock(ms) {
  const d = new Date(ms);
  return d.toISOString().slice(11, 19);
}

const REASONS = {
  insufficient_funds: 'insufficient funds',
  duplicate_cell_bet: 'already bet on this cell',
  cell_not_placeable: 'cell closed',
  multiplier_below_minimum: 'price moved',
  amount_out_of_range: 'stake out of range',
  exposure_limit: 'exposure limit',
  rate_limited: 'too fast',
  breaker_open: 'betting paused',
  overloaded: 'server busy',
  dependency_unavailable: 'server busy',
  stale_timestamp: 'clock skew',
  replayed_nonce: 'duplicate',
  unauthorized: 'signed out',
  bad_signature: 'bad signature',
  wrong_chain: 'wrong chain',
  lost_connection: 'not sent (offline)',
};

export function reason(code) {
  return REASONS[code] || String(code || 'refused').replaceAll('_', ' ');
}
