// Lease policy, kept apart from storage (flannel's LocalManager split):
// who gets which subnet, TTLs, expiry. Acquisitions in this process run one at
// a time so they never race each other; a conflict can still come from another
// server sharing the store, so create() is compare-and-set and we retry.
import { WeftError, invalid } from "../../lib/src/errors.js";
import { validateBackendAttrs, validateNodeName, validatePublicIp, type BackendAttrs, type Lease } from "../../lib/src/lease.js";
import type { NetworkConfig } from "../../lib/src/net-config.js";
import type { Logger } from "../../lib/src/logger.js";
import type { LeaseStore, Reservation } from "./store/lease-store.js";
import { formatCidr, parseCidr } from "../../lib/src/cidr.js";
import { isAllocatable, pickSubnet, subnetIp } from "./allocator.js";
import { SubnetIndex } from "./subnet-index.js";

const RACE_RETRIES = 10;

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
  readonly onAcquire?: (outcome: "created" | "reused" | "exhausted" | "invalid" | "error", seconds: number) => void;
  readonly onRenew?: (outcome: "ok" | "not_found" | "error", seconds: number) => void;
}

export class LeaseManager {
  readonly #o: LeaseManagerOptions;
  readonly #clock: Clock;
  #queue: Promise<unknown> = Promise.resolve();
  #index: Promise<SubnetIndex> | undefined;

  constructor(opts: LeaseManagerOptions) {
    this.#o = opts;
    this.#clock = opts.clock ?? { now: () => Date.now() };
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
    validatePublicIp(req.publicIP);
    const b = this.#o.network.backend;
    validateBackendAttrs(req.attrs, b.type, b.type === "vxlan" ? b.vni : undefined);
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

      if (existing && isAllocatable(cfg, existing.subnet) && (!reserved || reserved.subnet === existing.subnet)) {
        const lease = await this.#o.store.update(existing.subnet, req.nodeName, { publicIP: req.publicIP, attrs: req.attrs!, expiresAt });
        if (lease) return { lease, created: false };
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
      const lease = await this.#o.store.create({ subnet, nodeName: req.nodeName, publicIP: req.publicIP, attrs: req.attrs!, expiresAt });
      if (lease) return { lease, created: true };
      this.#lostRace(subnet);
    }
    throw new WeftError("LEASE_CONFLICT", `could not acquire a subnet for ${req.nodeName} after ${RACE_RETRIES} attempts (other servers kept taking them); retry`);
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

  async renew(nodeName: string, subnet: string): Promise<Lease> {
    const started = performance.now();
    validateNodeName(nodeName);
    validateSubnet(subnet, "renew");
    try {
      const lease = await this.#o.store.update(subnet, nodeName, { expiresAt: this.#clock.now() + this.#o.ttlMs });
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

  async release(nodeName: string, subnet: string): Promise<void> {
    validateNodeName(nodeName);
    validateSubnet(subnet, "release");
    const removed = await this.#o.store.remove(subnet, nodeName, "released");
    if (removed) this.#o.log.info({ nodeName, subnet, revision: removed.revision }, "lease released");
  }

  /** Operator action: removes whoever holds `subnet`. */
  async revoke(subnet: string): Promise<Lease | undefined> {
    const removed = await this.#o.store.remove(subnet, undefined, "revoked");
    if (removed) this.#o.log.info({ nodeName: removed.nodeName, subnet }, "lease revoked");
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

  /** Removes expired leases; watchers learn through the store's events. */
  async expire(): Promise<Lease[]> {
    const gone = await this.#serial(() => this.#o.store.expire(this.#clock.now()));
    for (const l of gone) this.#o.log.info({ nodeName: l.nodeName, subnet: l.subnet }, "lease expired");
    return gone;
  }
}
