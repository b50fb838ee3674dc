// Join tokens (kubeadm bootstrap tokens, headscale pre-auth keys): an
// operator makes one, a new node trades it for a client certificate. The
// format is <id>.<secret>, like kubeadm's "abcdef.0123456789abcdef": the id is
// public (it names the token in GET/DELETE), only the SHA-256 of the secret is
// stored, so a copy of the store cannot be used to join. Each token expires
// and has a number of uses; taking a use is one atomic store operation, so
// two lease servers on one store never both spend the last one.
import { createHash, randomInt, timingSafeEqual } from "node:crypto";
import { WeftError } from "../../../lib/src/errors.js";

export interface JoinTokenRecord {
  readonly id: string;
  /** SHA-256 of the secret, hex. */
  readonly secretHash: string;
  readonly createdAt: number;
  readonly expiresAt: number;
  readonly uses: number;
  readonly usesLeft: number;
}

/** Where tokens are kept: a table in the SQLite lease file, or keys in etcd next to the leases. */
export interface JoinTokenStore {
  /** Resolves false when the id is taken (the caller makes a new one). */
  create(t: JoinTokenRecord): Promise<boolean>;
  get(id: string): Promise<JoinTokenRecord | undefined>;
  list(): Promise<JoinTokenRecord[]>;
  delete(id: string): Promise<boolean>;
  /** Atomically spends one use of an unexpired token; false when none is left (or it expired, or is gone). */
  takeUse(id: string, now: number): Promise<boolean>;
}

export const TOKEN_RE = /^([a-z0-9]{6})\.([a-z0-9]{16})$/;
export const TOKEN_ID_RE = /^[a-z0-9]{6}$/;
const ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789";
/** Used-up and expired tokens stay listed (and refused by name) this long, then stores may forget them. */
export const KEEP_EXPIRED_MS = 86_400_000;
const FIX = "make a new one with POST /v1/join-tokens";

function randomText(n: number): string {
  let s = "";
  for (let i = 0; i < n; i++) s += ALPHABET[randomInt(ALPHABET.length)];
  return s;
}

function hashSecret(secret: string): string {
  return createHash("sha256").update(secret).digest("hex");
}

export interface Clock {
  now(): number;
}

export class JoinTokens {
  constructor(private readonly store: JoinTokenStore, private readonly clock: Clock = Date) {}

  /** The token text is returned here once and never again. */
  async create(ttlMs: number, uses: number): Promise<{ token: string; record: JoinTokenRecord }> {
    const now = this.clock.now();
    for (let attempt = 0; attempt < 5; attempt++) {
      const id = randomText(6);
      const secret = randomText(16);
      const record: JoinTokenRecord = { id, secretHash: hashSecret(secret), createdAt: now, expiresAt: now + ttlMs, uses, usesLeft: uses };
      if (await this.store.create(record)) return { token: `${id}.${secret}`, record };
    }
    throw new WeftError("INTERNAL", "could not find a free join token id in 5 tries");
  }

  list(): Promise<JoinTokenRecord[]> {
    return this.store.list();
  }

  delete(id: string): Promise<boolean> {
    return this.store.delete(id);
  }

  /** Checks a token without spending it; throws PERMISSION_DENIED saying what is wrong and the fix. */
  async check(token: string): Promise<JoinTokenRecord> {
    const m = TOKEN_RE.exec(token);
    if (!m) throw new WeftError("PERMISSION_DENIED", `join token is malformed (expected <6 characters>.<16 characters> of a-z, 0-9); ${FIX}`);
    const rec = await this.store.get(m[1]!);
    const given = Buffer.from(hashSecret(m[2]!), "hex");
    // An unknown id and a wrong secret read the same: neither says which ids exist.
    if (!rec || !timingSafeEqual(given, Buffer.from(rec.secretHash, "hex"))) {
      throw new WeftError("PERMISSION_DENIED", `join token ${m[1]} is unknown (deleted, mistyped, or made for another lease store); ${FIX}`);
    }
    const now = this.clock.now();
    if (rec.expiresAt <= now) throw new WeftError("PERMISSION_DENIED", `join token ${rec.id} expired at ${new Date(rec.expiresAt).toISOString()}; ${FIX}`);
    if (rec.usesLeft <= 0) throw usedUp(rec);
    return rec;
  }

  /** Spends one use of a checked token; another server may have taken the last one meanwhile. */
  async spend(rec: JoinTokenRecord): Promise<void> {
    if (!(await this.store.takeUse(rec.id, this.clock.now()))) {
      const now = await this.store.get(rec.id);
      if (!now) throw new WeftError("PERMISSION_DENIED", `join token ${rec.id} is unknown (deleted just now); ${FIX}`);
      if (now.expiresAt <= this.clock.now()) throw new WeftError("PERMISSION_DENIED", `join token ${rec.id} expired at ${new Date(now.expiresAt).toISOString()}; ${FIX}`);
      throw usedUp(now);
    }
  }
}

function usedUp(rec: JoinTokenRecord): WeftError {
  return new WeftError("PERMISSION_DENIED", `join token ${rec.id} is used up (all ${rec.uses} use${rec.uses === 1 ? "" : "s"} taken); ${FIX}`);
}
