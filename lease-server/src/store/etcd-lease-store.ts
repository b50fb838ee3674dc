// LeaseStore on etcd (v3 API): several lease servers on one etcd cluster are
// one system. etcd does what a single server's SQLite file did: every write is
// one etcd transaction (create-if-absent by comparing create revisions), the
// revision is etcd's (the same on every server), expiry is etcd's (each lease
// key is attached to an etcd lease with its TTL, so no server's clock decides),
// and every server hears every change through an etcd watch, whoever made it.
//
// Layout under --etcd-prefix (default /weft/network). Leases are Flannel's
// (flannel-reference §1.1, §1.3), so with --etcd-prefix /coreos.com/network
// flanneld nodes and weft agents see each other; weft adds its own fields to
// the value and keeps its other data beside them:
//   <prefix>/subnets/10.244.1.0-24   {"PublicIP","PublicIPv6","BackendType","BackendData",
//                                     "WeftNodeName","WeftExpiresAt","WeftInstance"}, on an etcd lease (TTL)
//   <prefix>/weft/nodes/<node>       the node's subnet, on the same etcd lease: one lease per node
//   <prefix>/weft/reservations/<10.244.1.0-24>, <prefix>/weft/reserved-nodes/<node>
//   <prefix>/weft/freed/<10.244.1.0-24>  {"NodeName"}; its mod revision orders frees
//   <prefix>/weft/reasons/<10.244.1.0-24>  why it was last removed, written in the removal's transaction
//   <prefix>/weft/alive              when a lease server last said it serves this store (ms)
//   <prefix>/weft/store-id           made once: the identity agents compare across servers
//   <prefix>/weft/fences/<id>        written by eventsSince to know it has seen all history
//
// The watch resumes by itself after a disconnect (the etcd3 client restarts it
// from its last revision). When etcd cancels it (history compacted past it),
// the store lists the leases again after a backoff, diffs them with what it
// had, and tells subscribers the difference as ordinary events, once.
//
// Outages: a lost quorum is bridged by etcd itself (a new leader extends every
// etcd lease by its TTL). For an outage of every lease server, each etcd lease
// outlives the weft expiry by `expiryGraceMs` (the server passes one renew
// interval), so agents that were renewing every TTL/2 find their lease again
// after an outage of up to about the TTL; a longer one expires them in etcd.
import { randomBytes } from "node:crypto";
import { Etcd3, type IKeyValue, type IOptions, type Watcher } from "etcd3";
import { WeftError, errorMessage } from "../../../lib/src/errors.js";
import type { BackendAttrs, Lease, LeaseEvent } from "../../../lib/src/lease.js";
import type { Logger } from "../../../lib/src/logger.js";
import type { FreedSubnet, LeaseChange, LeaseStore, NewLease, RemoveReason, Reservation } from "./lease-store.js";

export interface EtcdStoreOptions {
  readonly endpoints: readonly string[];
  /** Default /weft/network; /coreos.com/network shares Flannel's leases. */
  readonly prefix?: string;
  readonly tls?: { readonly ca?: Buffer; readonly cert?: Buffer; readonly key?: Buffer };
  readonly auth?: { readonly username: string; readonly password: string };
  readonly log: Logger;
  /** How long an etcd lease outlives the weft expiry (WeftExpiresAt); default 0. */
  readonly expiryGraceMs?: number;
}

const RETRIES = 5;

/** "10.244.1.0/24" <-> "10.244.1.0-24", Flannel's key form. */
export const subnetKeyPart = (subnet: string): string => subnet.replace("/", "-");
const subnetFromKey = (part: string): string | undefined => (/^\d+\.\d+\.\d+\.\d+-\d+$/.test(part) ? part.replace("-", "/") : undefined);

interface FlannelLeaseValue {
  PublicIP?: string;
  PublicIPv6?: string | null;
  BackendType?: string;
  BackendData?: Record<string, unknown> | null;
  WeftNodeName?: string;
  WeftExpiresAt?: number;
  WeftInstance?: string;
}

function toValue(l: NewLease): string {
  const a = l.attrs;
  const data = a.type === "vxlan" ? { VNI: a.vni, VtepMAC: a.vtepMac } : a.type === "wireguard" ? { PublicKey: a.publicKey, Port: a.listenPort } : undefined;
  return JSON.stringify({
    PublicIP: l.publicIP, PublicIPv6: null, BackendType: a.type, ...(data ? { BackendData: data } : {}),
    WeftNodeName: l.nodeName, WeftExpiresAt: l.expiresAt, ...(l.instanceId ? { WeftInstance: l.instanceId } : {}),
  });
}

/** A Flannel lease value as weft's Lease; flanneld's own leases get a node name from their subnet. */
function fromValue(subnet: string, v: FlannelLeaseValue, revision: number): Lease | undefined {
  const d = v.BackendData ?? {};
  let attrs: BackendAttrs;
  switch (v.BackendType) {
    case "vxlan": attrs = { type: "vxlan", vni: Number(d.VNI), vtepMac: String(d.VtepMAC ?? "").toLowerCase() }; break;
    case "wireguard": attrs = { type: "wireguard", publicKey: String(d.PublicKey ?? ""), listenPort: Number(d.Port ?? 0) }; break;
    case "host-gw": attrs = { type: "host-gw" }; break;
    default: return undefined;
  }
  if (typeof v.PublicIP !== "string") return undefined;
  const nodeName = v.WeftNodeName ?? `flannel-${subnet.split("/")[0]!.replaceAll(".", "-")}`;
  return { subnet, nodeName, publicIP: v.PublicIP, attrs, expiresAt: v.WeftExpiresAt ?? 0, revision, ...(v.WeftInstance ? { instanceId: v.WeftInstance } : {}) };
}

const text = (b: Buffer | undefined): string => (b ? b.toString("utf8") : "");

export class EtcdLeaseStore implements LeaseStore {
  readonly #client: Etcd3;
  readonly #prefix: string;
  readonly #log: Logger;
  readonly #listeners = new Set<(events: readonly LeaseEvent[]) => void>();
  /** The leases as the watch last told them: what a re-list is compared with. */
  #mirror = new Map<string, Lease>();
  #watcher: Watcher | undefined;
  #watching: Promise<void> | undefined;
  readonly #established = (() => {
    let resolve!: () => void;
    const promise = new Promise<void>((r) => (resolve = r));
    return { promise, resolve };
  })();
  #resets = 0;
  #closed = false;
  readonly #fenceId = randomBytes(6).toString("hex");
  /** "<prefix>/subnets/": every watch event is checked against it. */
  readonly #subnetsPrefix: string;
  readonly #reasonsPrefix: string;
  readonly #graceMs: number;
  /** The last removal reason seen on the watch per subnet, with its revision (same transaction = same revision). */
  readonly #reasons = new Map<string, { reason: string; revision: number }>();

  constructor(o: EtcdStoreOptions) {
    this.#prefix = (o.prefix ?? "/weft/network").replace(/\/+$/, "");
    this.#subnetsPrefix = `${this.#prefix}/subnets/`;
    this.#reasonsPrefix = `${this.#prefix}/weft/reasons/`;
    this.#graceMs = o.expiryGraceMs ?? 0;
    this.#log = o.log;
    const opts: IOptions = {
      hosts: [...o.endpoints],
      dialTimeout: 5000,
      ...(o.tls ? { credentials: { rootCertificate: o.tls.ca ?? Buffer.alloc(0), ...(o.tls.cert && o.tls.key ? { certChain: o.tls.cert, privateKey: o.tls.key } : {}) } } : {}),
      ...(o.auth ? { auth: { username: o.auth.username, password: o.auth.password } } : {}),
    };
    this.#client = new Etcd3(opts);
  }

  get prefix(): string {
    return this.#prefix;
  }

  /** The etcd client, for weft data kept beside the leases under the prefix (join tokens). */
  get client(): Etcd3 {
    return this.#client;
  }

  /** How often the watch had to be restarted from a fresh listing (etcd cancelled it, e.g. compaction). */
  get resyncs(): number {
    return this.#resets;
  }

  #key(...parts: string[]): Buffer {
    return Buffer.from([this.#prefix, ...parts].join("/"));
  }

  #range(prefix: Buffer): { key: Buffer; range_end: Buffer } {
    const end = Buffer.from(prefix);
    end[end.length - 1]! += 1;
    return { key: prefix, range_end: end };
  }

  /** Runs an etcd call, turning transport failures into STORE_UNAVAILABLE. */
  async #call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof WeftError) throw err;
      if (/compacted/i.test(errorMessage(err))) throw new WeftError("REVISION_COMPACTED", `${what}: ${errorMessage(err)}`, { cause: err });
      throw new WeftError("STORE_UNAVAILABLE", `etcd ${what} failed: ${errorMessage(err)}; check that etcd is reachable at the --store endpoints`, { cause: err });
    }
  }

  #leaseFrom(kv: IKeyValue): Lease | undefined {
    const subnet = subnetFromKey(text(kv.key).slice(this.#subnetsPrefix.length));
    if (!subnet) return undefined;
    try {
      return fromValue(subnet, JSON.parse(text(kv.value)) as FlannelLeaseValue, Number(kv.mod_revision));
    } catch {
      this.#log.warn({ key: text(kv.key) }, "etcd lease value is not JSON; ignoring it");
      return undefined;
    }
  }

  async #getLease(subnet: string): Promise<{ lease: Lease; kv: IKeyValue } | undefined> {
    const r = await this.#call("read a lease", () => this.#client.kv.range({ key: this.#key("subnets", subnetKeyPart(subnet)) }));
    const kv = r.kvs[0];
    const lease = kv && this.#leaseFrom(kv);
    return lease && kv ? { lease, kv } : undefined;
  }

  /** An etcd lease that ends when `expiresAt` does (0: none, the key stays until removed). */
  async #grant(expiresAt: number): Promise<string> {
    if (!expiresAt) return "0";
    const ttl = Math.max(1, Math.ceil((expiresAt + this.#graceMs - Date.now()) / 1000));
    const r = await this.#call("grant an etcd lease", () => this.#client.leaseClient.leaseGrant({ TTL: ttl, ID: 0 }));
    return r.ID;
  }

  #revoke(id: string): void {
    if (id === "0") return;
    this.#client.leaseClient.leaseRevoke({ ID: id }).catch(() => { /* it expires anyway */ });
  }

  /**
   * The network config at <prefix>/config (Flannel's place for it): `proposed` is stored when there is
   * none yet; returns what is stored (undefined when neither exists).
   */
  async networkConfig(proposed?: string): Promise<string | undefined> {
    const key = this.#key("config");
    const r = await this.#call("read the network config", () => this.#client.kv.txn({
      compare: [{ key, target: "Create", result: "Equal", create_revision: 0 }],
      success: proposed === undefined ? [] : [{ request_put: { key, value: Buffer.from(proposed) } }],
      failure: [{ request_range: { key } }],
    }));
    if (r.succeeded) return proposed;
    return text(r.responses[0]?.response_range?.kvs[0]?.value) || undefined;
  }

  async storeId(): Promise<string> {
    const key = this.#key("weft", "store-id");
    const r = await this.#call("read the store id", () => this.#client.kv.txn({
      compare: [{ key, target: "Create", result: "Equal", create_revision: 0 }],
      success: [{ request_put: { key, value: Buffer.from(randomBytes(6).toString("hex")) } }, { request_range: { key } }],
      failure: [{ request_range: { key } }],
    }));
    const range = r.responses.find((x) => x.response_range)?.response_range;
    return text(range?.kvs[0]?.value);
  }

  async listLeases(): Promise<{ leases: Lease[]; revision: number }> {
    const r = await this.#call("list leases", () => this.#client.kv.range(this.#range(this.#key("subnets", ""))));
    const leases = r.kvs.map((kv) => this.#leaseFrom(kv)).filter((l): l is Lease => !!l).sort((a, b) => (a.subnet < b.subnet ? -1 : 1));
    return { leases, revision: Number(r.header.revision) };
  }

  async getLeaseByNode(nodeName: string): Promise<Lease | undefined> {
    const r = await this.#call("read a node", () => this.#client.kv.range({ key: this.#key("weft", "nodes", nodeName) }));
    const subnet = text(r.kvs[0]?.value);
    if (!subnet) return undefined;
    const got = await this.#getLease(subnet);
    return got?.lease.nodeName === nodeName ? got.lease : undefined;
  }

  async listReservations(): Promise<Reservation[]> {
    const r = await this.#call("list reservations", () => this.#client.kv.range(this.#range(this.#key("weft", "reservations", ""))));
    return r.kvs.map((kv) => ({ subnet: subnetFromKey(text(kv.key).split("/").pop()!)!, nodeName: text(kv.value) }))
      .filter((x) => x.subnet).sort((a, b) => (a.subnet < b.subnet ? -1 : 1));
  }

  async listFreed(): Promise<FreedSubnet[]> {
    const r = await this.#call("list freed subnets", () => this.#client.kv.range(this.#range(this.#key("weft", "freed", ""))));
    return r.kvs.flatMap((kv) => {
      const subnet = subnetFromKey(text(kv.key).split("/").pop()!);
      if (!subnet) return [];
      try {
        return [{ subnet, nodeName: String((JSON.parse(text(kv.value)) as { NodeName: string }).NodeName), revision: Number(kv.mod_revision) }];
      } catch {
        return [];
      }
    });
  }

  async create(l: NewLease): Promise<Lease | undefined> {
    const lease = await this.#grant(l.expiresAt);
    const subnetKey = this.#key("subnets", subnetKeyPart(l.subnet));
    const nodeKey = this.#key("weft", "nodes", l.nodeName);
    const r = await this.#call("create a lease", () => this.#client.kv.txn({
      compare: [
        { key: subnetKey, target: "Create", result: "Equal", create_revision: 0 },
        { key: nodeKey, target: "Create", result: "Equal", create_revision: 0 },
      ],
      success: [
        { request_put: { key: subnetKey, value: Buffer.from(toValue(l)), lease } },
        { request_put: { key: nodeKey, value: Buffer.from(l.subnet), lease } },
      ],
      failure: [],
    }));
    if (!r.succeeded) {
      this.#revoke(lease);
      return undefined;
    }
    return { ...l, revision: Number(r.header.revision) };
  }

  async update(subnet: string, nodeName: string, change: LeaseChange): Promise<Lease | undefined> {
    for (let attempt = 0; attempt < RETRIES; attempt++) {
      const cur = await this.#getLease(subnet);
      if (!cur || cur.lease.nodeName !== nodeName) return undefined;
      const next: Lease = { ...cur.lease, ...change };
      // Flannel's renewal: a new etcd lease with the new TTL, the key put again on it.
      const lease = change.expiresAt !== undefined ? await this.#grant(next.expiresAt) : cur.kv.lease;
      const r = await this.#call("update a lease", () => this.#client.kv.txn({
        compare: [{ key: cur.kv.key, target: "Mod", result: "Equal", mod_revision: cur.kv.mod_revision }],
        success: [
          { request_put: { key: cur.kv.key, value: Buffer.from(toValue(next)), lease } },
          { request_put: { key: this.#key("weft", "nodes", nodeName), value: Buffer.from(subnet), lease } },
        ],
        failure: [],
      }));
      if (r.succeeded) {
        if (lease !== cur.kv.lease) this.#revoke(cur.kv.lease);
        return { ...next, revision: Number(r.header.revision) };
      }
      if (lease !== cur.kv.lease) this.#revoke(lease);
    }
    throw new WeftError("LEASE_CONFLICT", `lease ${subnet} kept changing under this update (other lease servers?); retry`);
  }

  async remove(subnet: string, nodeName: string | undefined, reason: RemoveReason): Promise<Lease | undefined> {
    for (let attempt = 0; attempt < RETRIES; attempt++) {
      const cur = await this.#getLease(subnet);
      if (!cur || (nodeName !== undefined && cur.lease.nodeName !== nodeName)) return undefined;
      const nodeKey = this.#key("weft", "nodes", cur.lease.nodeName);
      const r = await this.#call("remove a lease", () => this.#client.kv.txn({
        compare: [{ key: cur.kv.key, target: "Mod", result: "Equal", mod_revision: cur.kv.mod_revision }],
        // The reason goes first: watchers see its event before the deletion of the same revision.
        success: [
          { request_put: { key: this.#key("weft", "reasons", subnetKeyPart(subnet)), value: Buffer.from(reason) } },
          { request_delete_range: { key: cur.kv.key } },
          { request_delete_range: { key: nodeKey } },
          { request_put: { key: this.#key("weft", "freed", subnetKeyPart(subnet)), value: Buffer.from(JSON.stringify({ NodeName: cur.lease.nodeName })) } },
        ],
        failure: [],
      }));
      if (r.succeeded) {
        this.#revoke(cur.kv.lease);
        return { ...cur.lease, revision: Number(r.header.revision) };
      }
    }
    throw new WeftError("LEASE_CONFLICT", `lease ${subnet} kept changing under this removal (other lease servers?); retry`);
  }

  /** etcd expires leases itself (their etcd lease runs out): nothing to sweep, on any server's clock. */
  async expire(_now: number): Promise<Lease[]> {
    return [];
  }

  async lastAlive(): Promise<number | undefined> {
    const r = await this.#call("read the alive time", () => this.#client.kv.range({ key: this.#key("weft", "alive") }));
    const v = Number(text(r.kvs[0]?.value));
    return r.kvs[0] && Number.isFinite(v) ? v : undefined;
  }

  async markAlive(now: number): Promise<void> {
    await this.#call("write the alive time", () => this.#client.kv.put({ key: this.#key("weft", "alive"), value: Buffer.from(String(now)) }));
  }

  async putReservation(r: Reservation): Promise<void> {
    const resKey = this.#key("weft", "reservations", subnetKeyPart(r.subnet));
    const nodeKey = this.#key("weft", "reserved-nodes", r.nodeName);
    const existing = await this.#call("read a reservation", () => this.#client.kv.range({ key: resKey }));
    const holder = text(existing.kvs[0]?.value);
    if (holder === r.nodeName) return;
    if (holder) throw new WeftError("ALREADY_EXISTS", `subnet ${r.subnet} is already reserved for node ${holder}; delete that reservation first`);
    const byNode = await this.#call("read a reservation", () => this.#client.kv.range({ key: nodeKey }));
    if (byNode.kvs[0]) throw new WeftError("ALREADY_EXISTS", `node ${r.nodeName} already has a reservation (${text(byNode.kvs[0].value)}); delete it first`);
    const lease = await this.#getLease(r.subnet);
    if (lease && lease.lease.nodeName !== r.nodeName) throw new WeftError("ALREADY_EXISTS", `subnet ${r.subnet} is leased by node ${lease.lease.nodeName}; revoke that lease first`);
    const leaseKey = this.#key("subnets", subnetKeyPart(r.subnet));
    const t = await this.#call("reserve a subnet", () => this.#client.kv.txn({
      compare: [
        { key: resKey, target: "Create", result: "Equal", create_revision: 0 },
        { key: nodeKey, target: "Create", result: "Equal", create_revision: 0 },
        lease ? { key: leaseKey, target: "Mod", result: "Equal", mod_revision: lease.kv.mod_revision } : { key: leaseKey, target: "Create", result: "Equal", create_revision: 0 },
      ],
      success: [{ request_put: { key: resKey, value: Buffer.from(r.nodeName) } }, { request_put: { key: nodeKey, value: Buffer.from(r.subnet) } }],
      failure: [],
    }));
    if (!t.succeeded) throw new WeftError("ALREADY_EXISTS", `subnet ${r.subnet} or node ${r.nodeName} changed while reserving it (another lease server?); look at the reservations and retry`);
  }

  async deleteReservation(subnet: string): Promise<boolean> {
    const resKey = this.#key("weft", "reservations", subnetKeyPart(subnet));
    const cur = await this.#call("read a reservation", () => this.#client.kv.range({ key: resKey }));
    const kv = cur.kvs[0];
    if (!kv) return false;
    const t = await this.#call("delete a reservation", () => this.#client.kv.txn({
      compare: [{ key: resKey, target: "Mod", result: "Equal", mod_revision: kv.mod_revision }],
      success: [{ request_delete_range: { key: resKey } }, { request_delete_range: { key: this.#key("weft", "reserved-nodes", text(kv.value)) } }],
      failure: [],
    }));
    return t.succeeded;
  }

  /**
   * Lease events with revision > from, from etcd's history: a watch from from+1 over the whole prefix,
   * read until it passes a fence key written after the watch started (so the end is known even when no
   * lease changed since `from`).
   */
  async eventsSince(from: number): Promise<LeaseEvent[]> {
    const fence = this.#key("weft", "fences", this.#fenceId);
    const head = Number((await this.#call("read history", () => this.#client.kv.range({ key: fence, count_only: true }))).header.revision);
    if (from >= head) return [];
    // A read at the first wanted revision fails fast when etcd compacted it.
    await this.#call("read history", () => this.#client.kv.range({ key: fence, revision: from + 1, count_only: true }));
    const events: LeaseEvent[] = [];
    const prev = new Map<string, Lease>();
    return new Promise<LeaseEvent[]>((resolve, reject) => {
      let fenceRevision = Infinity;
      let settled = false;
      const done = (err?: unknown) => {
        if (settled) return;
        settled = true;
        void watcher.then((w) => w.cancel()).catch(() => undefined);
        if (err) reject(err);
        else resolve(events);
      };
      const watcher = this.#client.watch().prefix(this.#key("")).startRevision(String(from + 1)).withPreviousKV().create();
      watcher.then((w) => {
        w.on("data", (res) => {
          for (const e of res.events) {
            const rev = Number(e.kv.mod_revision);
            if (text(e.kv.key) === text(fence)) fenceRevision = Math.min(fenceRevision, rev);
            if (rev >= fenceRevision) continue;
            const ev = this.#toEvent(e.type, e.kv, e.prev_kv, prev);
            if (ev) events.push(ev);
          }
          if (Number(res.header.revision) >= fenceRevision) done();
        });
        w.on("error", (err) => done(/compact/i.test(errorMessage(err))
          ? new WeftError("REVISION_COMPACTED", `revision ${from} is no longer in etcd's history (compacted)`)
          : new WeftError("STORE_UNAVAILABLE", `etcd history watch failed: ${errorMessage(err)}`)));
        // The fence goes in once the watch exists, so its event is sure to come.
        return this.#call("write a fence", () => this.#client.kv.put({ key: fence, value: Buffer.from(String(Date.now())) }));
      }).catch(done);
      setTimeout(() => done(new WeftError("STORE_UNAVAILABLE", "etcd history watch gave no answer within 10 s")), 10_000).unref();
    });
  }

  /** One etcd watch event as a lease event (undefined for keys that are not leases). */
  #toEvent(type: "Put" | "Delete", kv: IKeyValue, prevKv: IKeyValue | undefined, known: Map<string, Lease>): LeaseEvent | undefined {
    const key = text(kv.key);
    const revision = Number(kv.mod_revision);
    if (key.startsWith(this.#reasonsPrefix)) {
      const subnet = subnetFromKey(key.slice(this.#reasonsPrefix.length));
      if (subnet && type === "Put") this.#reasons.set(subnet, { reason: text(kv.value), revision });
      return undefined;
    }
    if (!key.startsWith(this.#subnetsPrefix)) return undefined;
    if (type === "Put") {
      const lease = this.#leaseFrom(kv);
      if (!lease) return undefined;
      known.set(lease.subnet, lease);
      return { type: kv.create_revision === kv.mod_revision ? "added" : "changed", lease, revision };
    }
    const subnet = subnetFromKey(key.slice(this.#subnetsPrefix.length));
    if (!subnet) return undefined;
    const last = (prevKv && this.#leaseFrom(prevKv)) ?? known.get(subnet);
    known.delete(subnet);
    // Kept (one entry per subnet): the history watch of eventsSince reads the same revision too.
    const why = this.#reasons.get(subnet);
    // No reason written in the deleting transaction: etcd's lease ran out.
    const reason = why?.revision === revision ? why.reason : "expired";
    return last ? { type: "removed", lease: last, revision, reason } : undefined;
  }

  /** Resolves when the first watch is established (or the store closes). */
  subscribed(): Promise<void> {
    return this.#established.promise;
  }

  subscribe(listener: (events: readonly LeaseEvent[]) => void): () => void {
    this.#listeners.add(listener);
    this.#watching ??= this.#startWatch();
    return () => this.#listeners.delete(listener);
  }

  #emit(events: readonly LeaseEvent[]): void {
    if (events.length === 0) return;
    for (const l of this.#listeners) {
      try {
        l(events);
      } catch (err) {
        process.emitWarning(`lease store listener failed: ${(err as Error).stack ?? String(err)}`);
      }
    }
  }

  /** Lists the leases, tells subscribers what changed since the mirror, and watches from there. */
  async #startWatch(): Promise<void> {
    while (!this.#closed) {
      try {
        const { leases, revision } = await this.listLeases();
        const fresh = new Map(leases.map((l) => [l.subnet, l]));
        if (this.#resets > 0) this.#emit(this.#diff(fresh, revision));
        this.#mirror = fresh;
        // The whole prefix: a removal's reason is another key of the same transaction.
        const w = await this.#client.watch().prefix(this.#key("")).startRevision(String(revision + 1)).withPreviousKV().create();
        this.#watcher = w;
        this.#established.resolve();
        w.on("data", (res) => {
          const batch: LeaseEvent[] = [];
          for (const e of res.events) {
            const ev = this.#toEvent(e.type, e.kv, e.prev_kv, this.#mirror);
            if (!ev) continue;
            batch.push(ev);
            if (ev.type === "removed") void this.#recordFreed(ev);
          }
          this.#emit(batch);
        });
        const ended = await new Promise<unknown>((resolve) => w.once("error", resolve));
        if (this.#closed) return;
        this.#resets++;
        this.#log.warn({ err: errorMessage(ended), resets: this.#resets }, "etcd watch cancelled (history compacted?); listing the leases again");
        // Not awaited: a watcher etcd already cancelled may never see its cancel answered.
        void w.cancel().catch(() => undefined);
      } catch (err) {
        if (this.#closed) return;
        this.#resets++;
        this.#log.warn({ err: errorMessage(err) }, "etcd watch could not start; retrying");
      }
      // A backoff, never a hot loop (Flannel #2470).
      await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** Math.min(this.#resets, 5))));
    }
  }

  /** Events that turn the mirror into `fresh` (as of `revision`), in revision order. */
  #diff(fresh: Map<string, Lease>, revision: number): LeaseEvent[] {
    const out: LeaseEvent[] = [];
    for (const [subnet, l] of fresh) {
      const old = this.#mirror.get(subnet);
      if (!old) out.push({ type: "added", lease: l, revision: l.revision });
      else if (old.revision !== l.revision) out.push({ type: "changed", lease: l, revision: l.revision });
    }
    for (const [subnet, old] of this.#mirror) if (!fresh.has(subnet)) out.push({ type: "removed", lease: old, revision });
    return out.sort((a, b) => a.revision - b.revision);
  }

  /** A lease etcd expired (or another server removed) is remembered as freed, by the first server to see it. */
  async #recordFreed(e: LeaseEvent): Promise<void> {
    const key = this.#key("weft", "freed", subnetKeyPart(e.lease.subnet));
    await this.#client.kv.txn({
      compare: [{ key, target: "Mod", result: "Less", mod_revision: e.revision }],
      success: [{ request_put: { key, value: Buffer.from(JSON.stringify({ NodeName: e.lease.nodeName })) } }],
      failure: [],
    }).catch((err: unknown) => this.#log.warn({ err: errorMessage(err), subnet: e.lease.subnet }, "could not record a freed subnet"));
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#established.resolve();
    this.#listeners.clear();
    void this.#watcher?.cancel().catch(() => undefined);
    this.#client.close();
  }
}
