// Keys and signatures: the Ed25519 session key that signs every bet, Sign-In with Ethereum
// (EIP-4361) through an injected EIP-1193 wallet or the throwaway dev wallet, and the bet payload.
// Every private key stays in this browser; the server only ever sees public keys and signatures.
import { secp256k1 } from '../vendor/noble-curves/secp256k1.js';
import { ed25519 } from '../vendor/noble-curves/ed25519.js';
import { keccak_256 } from '../vendor/noble-hashes/sha3.js';
import { bytesToHex, hexToBytes, utf8ToBytes } from '../vendor/noble-hashes/utils.js';

const DEV_WALLET_KEY = 'tap.devWallet.v1';
const SESSION_KEY = 'tap.session.v1';
export const SESSION_KEY_URN = 'urn:tap:session-key:ed25519:';
const STATEMENT = 'Sign in to tap. This registers a session key for placing bets.';

// ── Ethereum helpers ────────────────────────────────────────────────────────────────────────

export function toChecksumAddress(address) {
  const lower = address.toLowerCase().replace(/^0x/, '');
  const hash = bytesToHex(keccak_256(utf8ToBytes(lower)));
  let out = '0x';
  for (let i = 0; i < 40; i++) {
    out += parseInt(hash[i], 16) >= 8 ? lower[i].toUpperCase() : lower[i];
  }
  return out;
}

function addressOfPublicKey(publicKey) {
  // Uncompressed SEC1 point without its 0x04 prefix, keccak'd; the address is the last 20 bytes.
  const point = secp256k1.Point.fromBytes(publicKey).toBytes(false);
  return toChecksumAddress('0x' + bytesToHex(keccak_256(point.subarray(1)).subarray(12)));
}

/** EIP-191 personal_sign digest: keccak256("\x19Ethereum Signed Message:\n" + len + message). */
export function personalDigest(message) {
  const body = utf8ToBytes(message);
  const prefix = utf8ToBytes(`\x19Ethereum Signed Message:\n${body.length}`);
  const all = new Uint8Array(prefix.length + body.length);
  all.set(prefix);
  all.set(body, prefix.length);
  return keccak_256(all);
}

// ── the SIWE message (EIP-4361), exactly as tap/siwe.py writes it ──────────────────────────

export function siweMessage(challenge, address, sessionPublicHex) {
  const lines = [
    `${challenge.domain} wants you to sign in with your Ethereum account:`,
    toChecksumAddress(address),
    '',
    STATEMENT,
    '',
    `URI: ${challenge.uri}`,
    'Version: 1',
    `Chain ID: ${challenge.chain_id}`,
    `Nonce: ${challenge.nonce}`,
    `Issued At: ${challenge.issued_at}`,
  ];
  if (challenge.expiration_time) lines.push(`Expiration Time: ${challenge.expiration_time}`);
  lines.push('Resources:', `- ${SESSION_KEY_URN}${sessionPublicHex.toLowerCase()}`);
  return lines.join('\n');
}

// ── wallets: both have { kind, address, signMessage(text) → 0x…130 hex } ──────────────────

/** The throwaway dev wallet: a secp256k1 key in localStorage. Test funds only, never real money. */
export function devWallet({ create }) {
  let hex = localStorage.getItem(DEV_WALLET_KEY);
  if (!hex || !/^[0-9a-f]{64}$/.test(hex)) {
    if (!create) return null;
    hex = bytesToHex(secp256k1.utils.randomSecretKey());
    localStorage.setItem(DEV_WALLET_KEY, hex);
  }
  const secret = hexToBytes(hex);
  const address = addressOfPublicKey(secp256k1.getPublicKey(secret, false));
  return {
    kind: 'dev',
    address,
    async signMessage(text) {
      const sig = secp256k1.sign(personalDigest(text), secret, { prehash: false, format: 'recovered' });
      // noble: recovery byte first, then r‖s; Ethereum: r‖s‖v with v = 27 + recovery.
      const eth = new Uint8Array(65);
      eth.set(sig.subarray(1, 65));
      eth[64] = 27 + sig[0];
      return '0x' + bytesToHex(eth);
    },
  };
}

export function forgetDevWallet() {
  localStorage.removeItem(DEV_WALLET_KEY);
}

/** An injected EIP-1193 provider (window.ethereum): asks the user for an account, then signs. */
export async function injectedWallet(provider) {
  const accounts = await provider.request({ method: 'eth_requestAccounts' });
  if (!Array.isArray(accounts) || !/^0x[0-9a-fA-F]{40}$/.test(accounts[0] || '')) {
    throw new Error('the wallet returned no account');
  }
  const address = toChecksumAddress(accounts[0]);
  return {
    kind: 'injected',
    address,
    async signMessage(text) {
      const hexText = '0x' + bytesToHex(utf8ToBytes(text));
      const sig = await provider.request({ method: 'personal_sign', params: [hexText, address] });
      if (typeof sig !== 'string' || !/^0x[0-9a-fA-F]{130}$/.test(sig)) {
        throw new Error('the wallet returned no signature');
      }
      return sig;
    },
  };
}

// ── the session: a fresh Ed25519 key per login, kept for this tab only ───────────────────────

export function newSessionKey() {
  const secret = ed25519.utils.randomSecretKey();
  return { secret, publicHex: bytesToHex(ed25519.getPublicKey(secret)) };
}

export function saveSession(s) {
  sessionStorage.setItem(
    SESSION_KEY,
    JSON.stringify({ ...s, secret: bytesToHex(s.secret) }),
  );
}

export function loadSession(nowMs) {
  try {
    const raw = JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null');
    if (!raw || typeof raw.token !== 'string' || !(raw.expires_at > nowMs + 60_000)) return null;
    return { ...raw, secret: hexToBytes(raw.secret) };
  } catch {
    return null;
  }
}

export function clearSession() {
  sessionStorage.removeItem(SESSION_KEY);
}

// ── bets ──────────────────────────────────────────────────────────────────────────────────────

export function newNonce() {
  return bytesToHex(crypto.getRandomValues(new Uint8Array(12))); // 24 hex chars
}

/** API.md: Ed25519 over `tap-bet|v1|{chain_id}|{address}|{cell_id}|{amount}|{nonce}|{timestamp}|{min}`. */
export function betPayload(b) {
  return (
    `tap-bet|v1|${b.chain_id}|${b.address.toLowerCase()}|${b.cell_id}|${b.amount}` +
    `|${b.nonce}|${b.timestamp}|${b.min_multiplier_bps}`
  );
}

export function signBet(secret, fields) {
  return bytesToHex(ed25519.sign(utf8ToBytes(betPayload(fields)), secret));
}
