// Join tokens in etcd, one JSON value per key <prefix>/weft/join-tokens/<id>,
// so every lease server on the store honours the same tokens. A use is taken
// by a compare-and-swap on the key's mod revision: of two servers spending the
// last use at once, one transaction fails, re-reads and finds none left. Each
// key carries an etcd lease that ends a day after the token expires, so etcd
// forgets old tokens by itself.
import type { Etcd3 } from "etcd3";
import { WeftError, errorMessage } from "../../../lib/src/errors.js";
import { KEEP_EXPIRED_MS, type JoinTokenRecord, type JoinTokenStore } from "./join-tokens.js";

/** Other servers spending uses at the same moment; each retry re-reads. */
const CAS_RETRIES = 20;

async function call<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw new WeftError("STORE_UNAVAILABLE", `etcd ${what} failed: ${errorMessage(err)}; check that etcd is reachable at the --store endpoints`, { cause: err });
  }
}

function parse(value: Buffer | Uint8Array | undefined): JoinTokenRecord | undefined {
  if (!value) return undefined;
  try {
    const v = JSON.parse(Buffer.from(value).toString("utf8")) as JoinTokenRecord;
    return typeof v.id === "string" && typeof v.secretHash === "string" && Number.isFinite(v.usesLeft) && Number.isFinite(v.expiresAt) ? v : undefined;
  } catch {
    return undefined;
  }
}

export class EtcdJoinTokenStore implements JoinTokenStore {
  readonly #dir: string;

  constructor(private readonly client: Etcd3, prefix: string) {
    this.#dir = `${prefix.replace(/\/+$/, "")}/weft/join-tokens/`;
  }

  #key(id: string): Buffer {
    return Buffer.from(this.#dir + id);
  }

  async #read(id: string): Promise<{ rec: JoinTokenRecord; mod: string } | undefined> {
    const r = await call("read a join token", () => this.client.kv.range({ key: this.#key(id) }));
    const kv = r.kvs[0];
    const rec = kv && parse(kv.value);
    return rec && kv ? { rec, mod: String(kv.mod_revision) } : undefined;
  }

  async create(t: JoinTokenRecord): Promise<boolean> {
    const ttl = Math.max(1, Math.ceil((t.expiresAt + KEEP_EXPIRED_MS - t.createdAt) / 1000));
    const lease = await call("grant an etcd lease", () => this.client.leaseClient.leaseGrant({ TTL: ttl, ID: 0 }));
    const key = this.#key(t.id);
    const r = await call("create a join token", () => this.client.kv.txn({
      compare: [{ key, target: "Create", result: "Equal", create_revision: 0 }],
      success: [{ request_put: { key, value: Buffer.from(JSON.stringify(t)), lease: lease.ID } }],
      failure: [],
    }));
    if (!r.succeeded) this.client.leaseClient.leaseRevoke({ ID: lease.ID }).catch(() => { /* it expires anyway */ });
    return r.succeeded;
  }

  async get(id: string): Promise<JoinTokenRecord | undefined> {
    return (await this.#read(id))?.rec;
  }

  async list(): Promise<JoinTokenRecord[]> {
    const start = Buffer.from(this.#dir);
    const end = Buffer.from(start);
    end[end.length - 1]! += 1;
    const r = await call("list join tokens", () => this.client.kv.range({ key: start, range_end: end }));
    return r.kvs.map((kv) => parse(kv.value)).filter((t): t is JoinTokenRecord => !!t).sort((a, b) => a.createdAt - b.createdAt || a.id.localeCompare(b.id));
  }

  async delete(id: string): Promise<boolean> {
    const r = await call("delete a join token", () => this.client.kv.deleteRange({ key: this.#key(id) }));
    return Number(r.deleted) > 0;
  }

  async takeUse(id: string, now: number): Promise<boolean> {
    const key = this.#key(id);
    for (let i = 0; i < CAS_RETRIES; i++) {
      const cur = await this.#read(id);
      if (!cur || cur.rec.usesLeft <= 0 || cur.rec.expiresAt <= now) return false;
      const next: JoinTokenRecord = { ...cur.rec, usesLeft: cur.rec.usesLeft - 1 };
      const r = await call("spend a join token use", () => this.client.kv.txn({
        compare: [{ key, target: "Mod", result: "Equal", mod_revision: cur.mod }],
        success: [{ request_put: { key, value: Buffer.from(JSON.stringify(next)), ignore_lease: true } }],
        failure: [],
      }));
      if (r.succeeded) return true;
    }
    throw new WeftError("STORE_UNAVAILABLE", `join token ${id}: too many concurrent uses; retry`);
  }
}
