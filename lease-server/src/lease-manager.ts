// Lease policy, kept apart from storage (flannel's LocalManager split):
// who gets which subnet, TTLs, expiry. Acquisitions in this process run one at
// a time so they never race each other; a conflict can still come from another
// server sharing the store, so create() is compare-and-set and we retry.
//
// Integrity rules kept here (issue 9):
//   - Without per-node client identity (no mTLS), a live lease is bound to the
//     agent instance that took it (its instance id); another instance gets
//     ALREADY_EXISTS until the lease expires. An empty id binds nothing.
//   - Backend attributes that must be unique (attr-index.ts) belong to the
//     first live lease that holds them.
//   - Outage grace: a server that finds the store's "alive" time older than
//     it should be was down (or the store was); leases that expired meanwhile
//     are kept for one renew interval more, so their agents can renew.
import { WeftError, invalid } from "../../lib/src/errors.js";
import { uniqueAttrs, validateBackendAttrs, validateInstanceId, validateNodeName, validatePublicIp, type BackendAttrs, type Lease } from "../../lib/src/lease.js";
import { AttrIndex } from "./attr-index.js";
import type { NetworkConfig } from "../../lib/src/net-config.js";
import type { Logger } from "../../lib/src/logger.js";
import type { LeaseStore, RemoveReason, Reservation } from "./store/lease-store.js";
import { contains, formatCidr, parseCidr, parseIpv4 } from "../../lib/src/cidr.js";
import { isAllocatable, pickSubnet, subnetIp } from "./allocator.js";
import { SubnetIndex } from "./subnet-index.js";

const RACE_RETRIES = 10;
const MAX_REASON = 200;

/**
 * Agents renew at half the TTL; one renew interval after an outage gives each of them a renewal (with 30 s
 * floor so that agents backing off after the outage have a chance). The lease server and docs use this.
 */
export function renewIntervalMs(ttlMs: number): number {
  return Math.max(ttlMs / 2, 30_000);
}

/** Only a prefix of an instance id is ever shown: whoever knows all of it may renew the lease. */
const shortId = (id: string | undefined) => (id ? `${id.slice(0, 6)}...` : "none");

function validateSubnet(subnet: string, verb: string): void {
  if (!subnet) throw invalid("subnet", "is empty", `send the subnet of the lease to ${verb}`);
  if (!parseCidr(subnet)) throw invalid("subnet", `${JSON.stringify(subnet.slice(0, 40))} is not a CIDR`, `send the lease's subnet as returned by AcquireLease, e.g. 10.244.3.0/24`);
}

export interface AcquireRequest {
  readonly nodeName: string;
  readonly publicIP: string;
  readonly attrs: BackendAttrs | undefined;
  /** The subnet the node had before (its subnet.env); a hint only. */
  readonly previousSubnet?: string;
  /** The agent instance asking ("" or absent: an older agent, not bound). */
  readonly instanceId?: string;
}

export interface Clock {
  now(): number;
}

export interface LeaseManagerOptions {
  readonly store: LeaseStore;
  readonly network: NetworkConfig;
  readonly ttlMs: number;
  readonly log: Logger;
  readonly clock?: Clock;
  /**
   * Bind live leases to agent instances. On when the server has no per-node client identity; with mTLS the
   * certificate is the identity (a reinstalled node with a fresh state dir gets its lease back).
   */
  readonly bindInstances?: boolean;
  /** Accept 169.254.0.0/16 public IPs (--allow-link-local-public-ip). */
  readonly allowLinkLocalPublicIp?: boolean;
  /** Grace after an outage; default renewIntervalMs(ttlMs). */
  readonly outageGraceMs?: number;
  /** How often the store's alive time is written; default min(TTL/4, 10 s). */
  readonly aliveEveryMs?: number;
  readonly onAcquire?: (outcome: "created" | "reused" | "exhausted" | "invalid" | "error", seconds: number) => void;
  readonly onRenew?: (outcome: "ok" | "not_found" | "error", seconds: number) => void;
}

export class LeaseManager {
  readonly #o: LeaseManagerOptions;
  readonly #clock: Clock;
  #queue: Promise<unknown> = Promise.resolve();
  #index: Promise<SubnetIndex> | undefined;
  #attrs: Promise<AttrIndex> | undefined;
  #storeId: Promise<string> | undefined;
  readonly #aliveEveryMs: number;
  /** When this server last wrote the store's alive time. */
  #lastMark: number | undefined;
  /** Leases that expired after `since` are kept until `until` (an outage ended at `until - grace`). */
  #grace: { readonly since: number; readonly until: number } | undefined;

  constructor(opts: LeaseManagerOptions) {
    this.#o = opts;
    this.#clock = opts.clock ?? { now: () => Date.now() };
    this.#aliveEveryMs = opts.aliveEveryMs ?? Math.min(opts.ttlMs / 4, 10_000);
  }

  /** The store's id (cached): replies to acquire and renew name it. */
  storeId(): Promise<string> {
    return (this.#storeId ??= this.#o.store.storeId().catch((err) => {
      this.#storeId = undefined;
      throw err;
    }));
  }

  /** When the current outage grace ends, if one is running. */
  get graceUntil(): number | undefined {
    return this.#grace && this.#clock.now() < this.#grace.until ? this.#grace.until : undefined;
  }

  /** Not yet removable: unexpired, never expiring, or expired during an outage whose grace still runs. */
  #live(l: Lease, now: number): boolean {
    if (!l.expiresAt || l.expiresAt > now) return true;
    const g = this.#grace;
    return !!g && now < g.until && l.expiresAt > g.since;
  }

  #attrIndex(): Promise<AttrIndex> {
    return (this.#attrs ??= AttrIndex.load(this.#o.store).catch((err) => {
      this.#attrs = undefined;
      throw err;
    }));
  }

  get network(): NetworkConfig {
    return this.#o.network;
  }

  get ttlMs(): number {
    return this.#o.ttlMs;
  }

  /** Runs fn after every earlier serialized call has finished. */
  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  #validate(req: AcquireRequest): void {
    validateNodeName(req.nodeName);
    validateInstanceId(req.instanceId);
    validatePublicIp(req.publicIP, "public_ip", { allowLinkLocal: this.#o.allowLinkLocalPublicIp });
    if (contains(this.#o.network.network, parseIpv4(req.publicIP)!)) {
      throw invalid("public_ip", `${req.publicIP} is inside the cluster network ${this.#networkText()}, so peers would route it into the overlay`, "advertise the node's underlay address (agent --public-ip or --iface)");
    }
    const b = this.#o.network.backend;
    validateBackendAttrs(req.attrs, b.type, b.type === "vxlan" ? b.vni : undefined);
  }

  /** Refuses a lease held by another agent instance (see bindInstances). */
  #checkInstance(l: Lease, instanceId: string | undefined, now: number, what: string): void {
    if (!this.#o.bindInstances || !l.instanceId || l.instanceId === (instanceId ?? "") || !this.#live(l, now)) return;
    const expires = l.expiresAt ? new Date(l.expiresAt).toISOString() : "never";
    throw new WeftError("ALREADY_EXISTS", `node ${JSON.stringify(l.nodeName)} already holds ${l.subnet} from another agent instance (instance ${shortId(l.instanceId)}, expires ${expires}); ${what}: stop the other agent or give this node another --node-name`);
  }

  /** Refuses attributes another live lease holds: the first holder keeps them. */
  async #checkAttrs(req: AcquireRequest, now: number): Promise<void> {
    const index = await this.#attrIndex();
    const clash = index.holders(req.nodeName, uniqueAttrs(req.publicIP, req.attrs!)).find((h) => this.#live(h.lease, now));
    if (clash) {
      throw new WeftError("ALREADY_EXISTS", `${clash.attr.label} is already published by node ${JSON.stringify(clash.lease.nodeName)} (lease ${clash.lease.subnet}); every node needs its own: check --public-ip/--iface, or the cloned state dir (agent-state.json, WireGuard key) of this node`);
    }
  }

  async acquire(req: AcquireRequest): Promise<Lease> {
    const started = performance.now();
    const done = (outcome: "created" | "reused" | "exhausted" | "invalid" | "error") => this.#o.onAcquire?.(outcome, (performance.now() - started) / 1000);
    try {
      this.#validate(req);
      const { lease, created } = await this.#serial(() => this.#acquire(req));
      done(created ? "created" : "reused");
      this.#o.log.info({ nodeName: lease.nodeName, subnet: lease.subnet, publicIP: lease.publicIP, revision: lease.revision }, created ? "lease acquired" : "lease refreshed");
      return lease;
    } catch (err) {
      const code = (err as WeftError).code;
      done(code === "LEASE_EXHAUSTED" ? "exhausted" : code === "INVALID_ARGUMENT" ? "invalid" : "error");
      throw err;
    }
  }

  async #acquire(req: AcquireRequest): Promise<{ lease: Lease; created: boolean }> {
    const cfg = this.#o.network;
    const expiresAt = this.#clock.now() + this.#o.ttlMs;
    for (let attempt = 0; attempt < RACE_RETRIES; attempt++) {
      const [reservations, existing] = await Promise.all([this.#o.store.listReservations(), this.#o.store.getLeaseByNode(req.nodeName)]);
      const reserved = reservations.find((r) => r.nodeName === req.nodeName);
      const now = this.#clock.now();
      if (existing) this.#checkInstance(existing, req.instanceId, now, "not acquired");
      await this.#checkAttrs(req, now);
      const instanceId = req.instanceId ?? "";

      if (existing && isAllocatable(cfg, existing.subnet) && (!reserved || reserved.subnet === existing.subnet)) {
        const lease = await this.#o.store.update(existing.subnet, req.nodeName, { publicIP: req.publicIP, attrs: req.attrs!, expiresAt, instanceId });
        if (lease) return this.#indexed({ lease, created: false });
        continue; // expired or revoked between the read and the write
      }
      if (existing) {
        // The network config changed under it, or an operator reserved another subnet for it.
        await this.#o.store.remove(existing.subnet, req.nodeName, "replaced");
        this.#o.log.info({ nodeName: req.nodeName, subnet: existing.subnet }, "lease replaced: subnet no longer matches the network config or reservation");
      }

      const subnet = await this.#choose(req, reservations, reserved, attempt > 0);
      if (!subnet) {
        throw new WeftError("LEASE_EXHAUSTED", `no free subnet left in ${this.#networkText()}: all node subnets are leased or reserved; release unused leases (DELETE /v1/leases/{subnet}) or widen Network/SubnetMin/SubnetMax`);
      }
      const lease = await this.#o.store.create({ subnet, nodeName: req.nodeName, publicIP: req.publicIP, attrs: req.attrs!, expiresAt, instanceId });
      if (lease) return this.#indexed({ lease, created: true });
      this.#lostRace(subnet);
    }
    throw new WeftError("LEASE_CONFLICT", `could not acquire a subnet for ${req.nodeName} after ${RACE_RETRIES} attempts (other servers kept taking them); retry`);
  }

  /** A store shared with other servers tells us through its watch, later: the next acquire must see this one now. */
  #indexed<T extends { lease: Lease }>(r: T): T {
    void this.#attrs?.then((i) => i.apply([{ type: "changed", lease: r.lease, revision: r.lease.revision }]));
    return r;
  }

  #networkText(): string {
    return formatCidr(this.#o.network.network);
  }

  /** Reservation, then the node's own last subnet, then its hint, then a fresh pick. */
  async #choose(req: AcquireRequest, reservations: readonly Reservation[], reserved: Reservation | undefined, lostRace: boolean): Promise<string | undefined> {
    const cfg = this.#o.network;
    if (reserved && isAllocatable(cfg, reserved.subnet)) return reserved.subnet;
    const index = await (this.#index ??= SubnetIndex.load(this.#o.store).catch((err) => {
      this.#index = undefined; // the next acquisition loads it again
      throw err;
    }));
    const reservedIps = new Set(reservations.map((r) => subnetIp(r.subnet)));
    const isTaken = (ip: number) => index.leased.has(ip) || reservedIps.has(ip);
    const format = (ip: number) => formatCidr({ ip, prefix: cfg.subnetLen });

    const mine = index.lastFreedBy(req.nodeName);
    if (mine !== undefined && !isTaken(mine) && isAllocatable(cfg, format(mine))) return format(mine);
    const hint = req.previousSubnet;
    if (hint && isAllocatable(cfg, hint) && !isTaken(subnetIp(hint))) {
      // Only a subnet nobody else held since: a stale subnet.env must never take another node's subnet.
      const last = index.freed.get(subnetIp(hint));
      if (!last || last.nodeName === req.nodeName) return hint;
    }
    return pickSubnet(cfg, { isTaken, freedOrder: (ip) => index.freed.get(ip)?.revision }, lostRace);
  }

  /** Marks a subnet another server took before our index heard of it, so the retry picks another. */
  #lostRace(subnet: string): void {
    void this.#index?.then((index) => index.leased.add(subnetIp(subnet)));
  }

  async renew(nodeName: string, subnet: string, instanceId?: string): Promise<Lease> {
    const started = performance.now();
    validateNodeName(nodeName);
    validateSubnet(subnet, "renew");
    validateInstanceId(instanceId);
    try {
      const now = this.#clock.now();
      if (this.#o.bindInstances) {
        const cur = await this.#o.store.getLeaseByNode(nodeName);
        if (cur?.subnet === subnet) this.#checkInstance(cur, instanceId, now, "not renewed");
      }
      // An expired lease still in the store (e.g. in an outage grace) is renewed like a live one.
      const lease = await this.#o.store.update(subnet, nodeName, { expiresAt: now + this.#o.ttlMs });
      if (!lease) {
        this.#o.onRenew?.("not_found", (performance.now() - started) / 1000);
        throw new WeftError("LEASE_NOT_FOUND", `node ${nodeName} holds no lease on ${subnet} (it expired or was revoked); acquire a new lease`);
      }
      this.#o.onRenew?.("ok", (performance.now() - started) / 1000);
      this.#o.log.info({ nodeName, subnet, expiresAt: new Date(lease.expiresAt).toISOString(), revision: lease.revision }, "lease renewed");
      return lease;
    } catch (err) {
      if ((err as WeftError).code !== "LEASE_NOT_FOUND") this.#o.onRenew?.("error", (performance.now() - started) / 1000);
      throw err;
    }
  }

  async release(nodeName: string, subnet: string, instanceId?: string): Promise<void> {
    validateNodeName(nodeName);
    validateSubnet(subnet, "release");
    validateInstanceId(instanceId);
    if (this.#o.bindInstances) {
      const cur = await this.#o.store.getLeaseByNode(nodeName);
      if (cur?.subnet === subnet) this.#checkInstance(cur, instanceId, this.#clock.now(), "not released");
    }
    const removed = await this.#o.store.remove(subnet, nodeName, "released");
    if (removed) this.#o.log.info({ nodeName, subnet, revision: removed.revision }, "lease released");
  }

  /** Operator action: removes whoever holds `subnet`; the removal event carries "revoked: <reason>". */
  async revoke(subnet: string, reason?: string): Promise<Lease | undefined> {
    if (reason !== undefined && (reason.length > MAX_REASON || !/^[\x20-\x7e]*$/.test(reason))) {
      throw invalid("reason", `must be at most ${MAX_REASON} printable ASCII characters (got ${reason.length})`, "shorten it, without control or non-ASCII characters");
    }
    const why: RemoveReason = reason ? `revoked: ${reason}` : "revoked";
    const removed = await this.#o.store.remove(subnet, undefined, why);
    if (removed) this.#o.log.info({ nodeName: removed.nodeName, subnet, reason: why }, "lease revoked");
    return removed;
  }

  async reserve(r: Reservation): Promise<void> {
    validateNodeName(r.nodeName, "nodeName");
    if (!isAllocatable(this.#o.network, r.subnet)) {
      throw invalid("subnet", `${JSON.stringify(r.subnet.slice(0, 40))} is not a /${this.#o.network.subnetLen} node subnet between SubnetMin and SubnetMax of ${this.#networkText()}`, "pick a subnet from GET /v1/network's range");
    }
    await this.#serial(() => this.#o.store.putReservation(r));
    this.#o.log.info({ nodeName: r.nodeName, subnet: r.subnet }, "subnet reserved");
  }

  async unreserve(subnet: string): Promise<boolean> {
    const deleted = await this.#serial(() => this.#o.store.deleteReservation(subnet));
    if (deleted) this.#o.log.info({ subnet }, "reservation deleted");
    return deleted;
  }

  /**
   * Removes expired leases; watchers learn through the store's events. Leases that expired during an outage
   * (see #checkAlive) stay until its grace ends.
   */
  async expire(): Promise<Lease[]> {
    const now = this.#clock.now();
    await this.#checkAlive(now);
    const g = this.#grace;
    const cutoff = g && now < g.until ? Math.min(now, g.since) : now;
    const gone = await this.#serial(() => this.#o.store.expire(cutoff));
    for (const l of gone) this.#o.log.info({ nodeName: l.nodeName, subnet: l.subnet }, "lease expired");
    return gone;
  }

  /**
   * Reads the store's alive time and writes ours (every aliveEveryMs). An alive time older than two periods
   * means no server served the store meanwhile (this one restarted, all were down, or the store was):
   * leases that expired since then get a grace period. Shared stores (etcd) share the time, so one server
   * restarting among live ones finds it fresh and grants nothing.
   */
  async #checkAlive(now: number): Promise<void> {
    if (this.#lastMark !== undefined && now - this.#lastMark < this.#aliveEveryMs) return;
    try {
      await this.#markAlive(now);
    } catch (err) {
      // The store cannot be read or written (etcd down, disk full): renewals fail too, and the next time
      // this succeeds the stale alive time grants the grace. Whoever watches the store reports it.
      this.#o.log.debug({ err: (err as Error).message }, "could not record that this server is alive");
    }
  }

  async #markAlive(now: number): Promise<void> {
    const last = await this.#o.store.lastAlive();
    // Written before anything is concluded: while the store cannot be written (disk full) no grace starts,
    // and once it can, the stale time it had grants one from then.
    await this.#o.store.markAlive(now);
    this.#lastMark = now;
    if (last === undefined || now - last <= 2 * this.#aliveEveryMs) return;
    const graceMs = this.#o.outageGraceMs ?? renewIntervalMs(this.#o.ttlMs);
    // A second outage while the first one's grace still runs keeps the first one's leases too.
    const since = this.#grace && now < this.#grace.until ? Math.min(last, this.#grace.since) : last;
    const until = now + graceMs;
    this.#grace = { since, until };
    const expired = await this.#o.store.listLeases()
      .then(({ leases }) => String(leases.filter((l) => l.expiresAt > since && l.expiresAt <= now).length), () => "some");
    const downS = Math.round((now - last) / 1000);
    this.#o.log.warn({ downSeconds: downS, lastAlive: new Date(last).toISOString(), expired: Number(expired), graceUntil: new Date(until).toISOString() },
      `lease server was down for ${downS}s; ${expired} leases expired meanwhile and get a grace period until ${new Date(until).toISOString()} (one renew interval)`);
  }
}
