// The agent's lifecycle, in Flannel's start-up order: network config from the
// server, external interface, backend device (weft devices of another backend
// are removed first), lease (with the device's attributes), device address,
// masquerade and forward rules, subnet.env; then these loops run until stop():
//   - renew: at half the TTL the server granted, counted on this host's
//     monotonic clock from when the request was sent (never by comparing the
//     server's expiresAt with our wall clock: clocks may be skewed by hours);
//     retried with backoff and jitter, warning why (at most every 30 s);
//     re-acquires when the server no longer knows the lease, except after a
//     revocation: then only after a back-off (30 s doubling to 10 min), so a
//     revoke does not make every peer flap within milliseconds;
//   - watch: WatchLeases into the PeerTable, resuming from the last revision;
//     a server whose store is not the one our lease is in (a store id other
//     than the one learned after acquiring) is refused: its feed is not applied,
//     nothing is renewed or acquired there, /readyz says why, and the watch
//     moves on and retries until a server of our store answers;
//   - reconcile (dataplane-sync.ts): on every peer change, on kernel
//     notifications that undo something we want (a deleted route, ARP or FDB
//     entry, address, device, a changed MTU: repaired within a second), and on
//     a timer that also checks the device and the firewall rules.
// Losing the lease server changes nothing in the kernel: the last known peers
// stay programmed. stop() (SIGTERM) leaves the device, routes and lease in
// place, so a restarted agent adopts everything without a dropped packet.
import { WeftError, isWeftError } from "../../lib/src/errors.js";
import type { BackendAttrs, Lease } from "../../lib/src/lease.js";
import type { Logger } from "../../lib/src/logger.js";
import type { NetworkConfig } from "../../lib/src/net-config.js";
import { parseCidr } from "../../lib/src/cidr.js";
import type { AgentView, LeaseView, PeerView } from "./api.js";
import type { Backend, KeyRotation, LocalNode } from "./backends/backend.js";
import { createBackend } from "./backends/index.js";
import { collectGarbage } from "./heap.js";
import { removeStaleDevices } from "./backends/owned-devices.js";
import { backoffDelay, clampTimerMs, sleep } from "./backoff.js";
import type { AgentConfig } from "./config.js";
import type { Dataplane } from "./dataplane/dataplane.js";
import { DataplaneSync } from "./dataplane-sync.js";
import type { FirewallOptions, RuleSet } from "./firewall/firewall.js";
import { selectInterface } from "./iface.js";
import type { GrantedLease, LeaseApi } from "./lease-client.js";
import type { AgentMetrics } from "./metrics.js";
import { PeerTable } from "./peer-table.js";
import { Reconciler } from "./reconciler.js";
import { AgentState } from "./state.js";
import { readPreviousSubnet, writeSubnetEnv } from "./subnet-env.js";
import { StatusReporter } from "./status-reporter.js";
import { WEFT_VERSION } from "../../lib/src/build-info.js";

export interface AgentDeps {
  readonly config: AgentConfig;
  readonly dataplane: Dataplane;
  readonly client: LeaseApi;
  readonly log: Logger;
  readonly metrics: AgentMetrics;
  /** The masquerade and forward rules for this node (firewall.ts on a real host). */
  readonly firewall: (o: FirewallOptions) => RuleSet;
  /** Wall and monotonic time; tests fake a skewed wall clock. */
  readonly clock?: AgentClock;
  /** Re-acquire back-off after a revocation: base, doubling per revoke in a row, up to max (each ±20 %). */
  readonly revokeBackoff?: { readonly baseMs: number; readonly maxMs: number };
}

export interface AgentClock {
  /** Wall clock (ms since the epoch): only for showing times. */
  now(): number;
  /** Monotonic ms: what renewals are scheduled on. */
  monotonic(): number;
}

const systemClock: AgentClock = { now: () => Date.now(), monotonic: () => performance.now() };

/** Errors that retrying cannot fix. ALREADY_EXISTS: another agent instance holds this node name, or our attributes. */
const PERMANENT = new Set(["CONFIG_INVALID", "INVALID_ARGUMENT", "PERMISSION_DENIED", "ALREADY_EXISTS"]);
const RENEW_WARN_EVERY_MS = 30_000;

export class Agent {
  private readonly ac = new AbortController();
  private readonly peers: PeerTable;
  private sync: DataplaneSync | undefined;
  private backend: Backend | undefined;
  private rotationTimer: NodeJS.Timeout | undefined;
  private leaseOps: Promise<unknown> = Promise.resolve();
  private network: NetworkConfig | undefined;
  private local: LocalNode | undefined;
  private lease: Lease | undefined;
  /** Monotonic time by which the lease runs out unless renewed (Infinity: never). */
  private deadline = Infinity;
  private instanceId = "";
  private readonly clock: AgentClock;
  /** Set from a revocation of our lease until the re-acquire after the back-off succeeds. */
  private revoked: { readonly reason: string; readonly retryAt: number } | undefined;
  private revokes = { count: 0, last: -Infinity };
  /** Renewals failing in a row: a watch that gets through again means the server is back, so renew at once. */
  private renewFailures = 0;
  /** Attributes published (at start-up, or since by announce()); a re-acquire reuses them (no second device set-up). */
  private attrs: BackendAttrs | undefined;
  private wasReady = false;
  /** The newest lease-feed revision the watch has taken in (the peer table is as of it). */
  private feedRevision = 0;
  /** The feed revision at the peer table's last change: a pass must read at least this to reflect the feed. */
  private changedAt = 0;
  /** The feed revision when the running pass read the peers, and what the last successful pass read. */
  private passReads = 0;
  private passApplied = 0;
  private reporter: StatusReporter | undefined;
  /** The server the lease was (last) acquired from, for logs. */
  private leaseServer = "";
  /** The store our lease is in and the server that said so: the first store id the watch reports after acquiring. */
  private leaseStore: { readonly id: string; readonly server: string } | undefined;
  /** Set while the server answering the watch has another store; cleared when one of ours answers again. */
  private mismatch: { readonly id: string; readonly server: string } | undefined;
  /** The store id each server last reported on the watch ("" from one that names none). */
  private readonly serverStores = new Map<string, string>();
  /** The server of the open watch stream, and a way to end that stream (the watch reconnects at once, to client.server). */
  private watchServer: string | undefined;
  private rewatch: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private unwatch: (() => void) | undefined;
  private renewKick: (() => void) | undefined;
  private fatalReject!: (e: Error) => void;
  /** Rejects when the agent cannot continue (e.g. its subnet changed); main exits. */
  readonly fatal: Promise<never>;

  constructor(private readonly deps: AgentDeps) {
    this.clock = deps.clock ?? systemClock;
    this.peers = new PeerTable(deps.config.nodeName, (c) => deps.log.warn({ peer: c.lease.nodeName, subnet: c.lease.subnet, holder: c.holder.nodeName, holderSubnet: c.holder.subnet }, `peer lease not programmed: ${c.detail}`));
    this.fatal = new Promise<never>((_, reject) => (this.fatalReject = reject));
    this.fatal.catch(() => { /* observed by main */ });
  }

  private get signal(): AbortSignal {
    return this.ac.signal;
  }

  /** Runs start-up; resolves once subnet.env is written and the loops run. */
  async start(): Promise<void> {
    const { config, dataplane, client, log, metrics } = this.deps;
    this.network = await this.retry("get network config", () => client.getNetworkConfig());
    metrics.buildInfo.setBackend(this.network.backend.type);
    const iface = await selectInterface(dataplane, { iface: config.iface, publicIP: config.publicIP });
    log.info({ iface: iface.name, ip: iface.ip, publicIP: iface.publicIP, mtu: iface.mtu }, "external interface selected");
    this.local = { nodeName: config.nodeName, network: this.network, iface };

    const state = new AgentState(config.stateDir, log.child({ component: "state" }));
    this.instanceId = await state.instanceId();
    const previousSubnet = await readPreviousSubnet(config.subnetFile);
    await this.refuseTakenName(previousSubnet);
    const backend = await createBackend({
      dataplane, network: this.network, vxlanDevice: config.vxlanDevice,
      wireguard: { device: config.wireguardDevice, presharedKey: config.wireguardPsk, stateDir: config.stateDir },
      state, log: log.child({ component: this.network.backend.type }),
      announce: (a) => this.announce(a),
    });
    this.backend = backend;
    // A backend change in the network config takes effect here: the old backend's devices go.
    await removeStaleDevices(dataplane, backend.devices, log);
    const attrs = await backend.init(this.local);
    this.attrs = attrs;

    // ALREADY_EXISTS (another agent instance holds this node name) is permanent: start-up fails here,
    // before any route, address or rule is touched; only this host's own device exists by now.
    const sent = this.clock.monotonic();
    const acquired = await this.retry("acquire lease", () => client.acquire({ nodeName: config.nodeName, publicIP: iface.publicIP, attrs, previousSubnet, instanceId: this.instanceId }));
    this.leaseServer = client.server;
    this.onLease(acquired, sent);
    log.info({ subnet: acquired.subnet, previousSubnet, expiresAt: new Date(acquired.expiresAt).toISOString(), ttlMs: acquired.ttlMs, server: this.leaseServer }, "lease acquired");
    await backend.configureSubnet(acquired);

    // Flannel's order: the rules are in place before subnet.env says FLANNEL_IPMASQ=true.
    const subnet = parseCidr(acquired.subnet)!;
    const firewall = this.deps.firewall({ network: this.network.network, subnet, masquerade: config.ipMasq, forward: config.forwardRules });
    await firewall.check();
    await firewall.ensure();

    await writeSubnetEnv(config.subnetFile, { network: this.network.network, subnet, mtu: backend.mtu(), ipMasq: config.ipMasq });
    log.info({ path: config.subnetFile, mtu: backend.mtu(), ipMasq: config.ipMasq }, "subnet.env written");

    const reconciler = new Reconciler(log.child({ component: "reconciler" }), {
      onError: (op) => metrics.reconcileErrors.inc({ op }),
      onPass: (r) => metrics.reconcileDuration.observe(r.durationMs / 1000),
      // A bulk pass would read back thousands of its own changes as notifications; one more pass after it is cheaper.
      onBulk: () => dataplane.muteObjectChanges(),
    });
    const sync = new DataplaneSync({
      backend, firewall, reconciler, peers: this.peers, underlayIndex: iface.index,
      resyncIntervalMs: config.resyncIntervalMs, log, metrics, signal: this.signal,
      onPassStart: () => (this.passReads = this.feedRevision),
      afterKernelRead: collectGarbage,
      onPass: (ok) => {
        if (ok) this.passApplied = this.passReads;
        this.updateReady();
      },
    });
    this.sync = sync;
    if (client.reportStatus) {
      const reporter = new StatusReporter({ open: () => client.reportStatus!(), status: () => this.statusReport(), log: log.child({ component: "status" }), signal: this.signal });
      this.reporter = reporter;
      void reporter.run().catch((err) => log.error({ err }, "status reporting stopped"));
    }
    if (config.watchKernel) this.unwatch = dataplane.watch((c) => sync.onKernelChange(c));
    void this.renewLoop().catch((err) => this.die(err));
    void this.watchLoop().catch((err) => this.die(err));
    this.timer = setInterval(() => sync.request({ repair: true, firewall: true }), clampTimerMs(config.resyncIntervalMs));
    if (config.wireguardKeyRotationMs && backend.rotateKey) {
      this.rotationTimer = setInterval(() => {
        this.rotateKey().catch((err) => log.error({ err: (err as Error).message }, "scheduled wireguard key rotation failed; the old key stays in use"));
      }, clampTimerMs(config.wireguardKeyRotationMs));
    }
  }

  /**
   * A second agent on the same host (another state dir, the same subnet.env) must fail before it touches
   * the device the first one uses (a new WireGuard key or VTEP MAC would cut the first off). Renewing the
   * lease of subnet.env answers ALREADY_EXISTS exactly then; anything else is left to the acquire.
   */
  private async refuseTakenName(previousSubnet: string | undefined): Promise<void> {
    if (!previousSubnet) return;
    const { client, config } = this.deps;
    try {
      await client.renew(config.nodeName, previousSubnet, this.instanceId);
    } catch (err) {
      if (isWeftError(err, "ALREADY_EXISTS")) throw err;
    }
  }

  /** POST /v1/wireguard/rotate-key and the rotation timer. */
  async rotateKey(): Promise<KeyRotation> {
    const b = this.backend;
    if (!b || !this.lease) throw new WeftError("NOT_READY", "the agent is still starting (no lease yet); retry in a moment");
    if (!b.rotateKey) throw new WeftError("NOT_SUPPORTED", `the network's backend is ${b.type}; key rotation is for the wireguard backend`);
    return b.rotateKey();
  }

  /** Publishes new backend attributes: the lease is acquired again with them; it must keep its subnet. */
  private announce(attrs: BackendAttrs): Promise<void> {
    return this.leaseOp(async () => {
      const { client, config, log } = this.deps;
      const old = this.lease!;
      const refused = this.acquireRefusal(client.server);
      if (refused) throw new WeftError("NOT_READY", `not publishing new backend attributes: ${refused}`);
      const sent = this.clock.monotonic();
      const l = await client.acquire({ nodeName: config.nodeName, publicIP: this.local!.iface.publicIP, attrs, previousSubnet: old.subnet, instanceId: this.instanceId });
      this.attrs = attrs;
      if (l.subnet !== old.subnet) {
        this.die(new WeftError("LEASE_CONFLICT", `lease changed from ${old.subnet} to ${l.subnet} while publishing new backend attributes (it had expired); restarting so pods and subnet.env follow`));
        return;
      }
      this.onLease(l, sent);
      log.info({ subnet: l.subnet, attrs }, "backend attributes published");
    });
  }

  /** Acquires run one at a time: a re-acquire must not publish attributes older than an announce's. */
  private leaseOp<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.leaseOps.then(fn);
    this.leaseOps = p.catch(() => undefined);
    return p;
  }

  private die(err: unknown): void {
    if (this.signal.aborted) return;
    this.fatalReject(err instanceof Error ? err : new Error(String(err)));
  }

  /** Retries transient failures with backoff until success or stop(). */
  private async retry<T>(what: string, fn: () => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        if (isWeftError(err) && PERMANENT.has(err.code)) throw err;
        if (this.signal.aborted) throw new WeftError("INTERNAL", `${what}: agent stopping`);
        const delay = backoffDelay(attempt, 500, 10_000);
        this.deps.log.warn({ err: (err as Error).message, attempt, retryInMs: delay }, `${what} failed; retrying`);
        await sleep(delay, this.signal);
      }
    }
  }

  /**
   * A lease from an acquire or renew sent at monotonic time `sent`. Its deadline is sent + the TTL the server
   * granted (the server counted from later, so we are on the safe side); a server that states no TTL
   * (an older weft) leaves only expiresAt against our wall clock.
   */
  private onLease(l: GrantedLease, sent: number): void {
    this.lease = l;
    const ttl = l.ttlMs ?? (l.expiresAt ? l.expiresAt - this.clock.now() : Infinity);
    this.deadline = l.expiresAt ? sent + ttl : Infinity;
    this.deps.metrics.leaseExpiry.set(l.expiresAt / 1000);
  }

  /** Our lease was revoked (reason from the removal event): re-acquire only after a back-off. */
  private onRevoked(reason: string): void {
    const now = this.clock.monotonic();
    const { baseMs, maxMs } = this.deps.revokeBackoff ?? { baseMs: 30_000, maxMs: 600_000 };
    // Revokes in a row double the wait; an hour without one starts over.
    this.revokes = { count: now - this.revokes.last > 3_600_000 ? 1 : this.revokes.count + 1, last: now };
    const delay = Math.round(Math.min(maxMs, baseMs * 2 ** (this.revokes.count - 1)) * (0.8 + 0.4 * Math.random()));
    this.revoked = { reason, retryAt: now + delay };
    this.deps.log.warn({ subnet: this.lease?.subnet, reason, revokes: this.revokes.count, reacquireInMs: delay },
      `lease ${this.lease?.subnet} was ${reason}; the data plane stays as it is, and the lease is acquired again in ${Math.round(delay / 1000)}s`);
    this.updateReady();
    this.renewKick?.();
  }

  private async renewLoop(): Promise<void> {
    const { client, config, log, metrics } = this.deps;
    let attempt = 0;
    let lastWarn = -Infinity;
    let failures = 0;
    while (!this.signal.aborted) {
      if (this.revoked) {
        const wait = this.revoked.retryAt - this.clock.monotonic();
        if (wait > 0) {
          await sleep(wait, this.signal);
          continue;
        }
        await this.reacquire();
        this.revoked = undefined;
        this.updateReady();
        attempt = 0;
        continue;
      }
      const lease = this.lease!;
      const remaining = lease.expiresAt ? this.deadline - this.clock.monotonic() : 3_600_000;
      // Renew at half the remaining time; after a failure retry soon, well before expiry;
      // once the lease has expired anyway, back off properly instead of hammering the server.
      const wait = attempt === 0 ? Math.max(250, remaining / 2)
        : remaining > 0 ? Math.min(backoffDelay(attempt - 1, 250, 5000), Math.max(250, remaining / 4))
        : backoffDelay(attempt, 1000, 30_000);
      await new Promise<void>((resolve) => {
        this.renewKick = resolve;
        void sleep(wait, this.signal).then(resolve);
      });
      this.renewKick = undefined;
      if (this.signal.aborted) return;
      if (this.revoked || !lease.expiresAt) continue;
      const server = client.server;
      const foreign = this.foreignStore(server);
      if (foreign !== undefined) {
        // Our lease is not in that store: a renew there can only say LEASE_NOT_FOUND. Try the next server.
        metrics.leaseRenewals.inc({ result: "store_mismatch" });
        attempt++;
        log.debug({ server, store: foreign }, "not renewing with a lease server of another store");
        client.nextServer();
        continue;
      }
      try {
        const sent = this.clock.monotonic();
        this.onLease(await client.renew(config.nodeName, lease.subnet, this.instanceId), sent);
        metrics.leaseRenewals.inc({ result: "ok" });
        if (failures > 0) log.info({ failures, subnet: lease.subnet }, "lease renewed again after failures");
        attempt = 0;
        failures = 0;
        this.renewFailures = 0;
      } catch (err) {
        // Another agent instance holds our node name now (our lease had expired): nothing to retry.
        if (isWeftError(err, "ALREADY_EXISTS")) throw err;
        if (isWeftError(err, "LEASE_NOT_FOUND")) {
          metrics.leaseRenewals.inc({ result: "not_found" });
          if (this.revoked) continue; // the revocation's back-off decides when
          const refused = this.acquireRefusal(server);
          if (refused) {
            // Acquiring there would hand this node a second subnet in another lease database.
            attempt++;
            log.warn({ subnet: lease.subnet, server, reason: refused }, "lease unknown to the server; not acquiring it again there");
            continue;
          }
          log.warn({ subnet: lease.subnet, server }, "lease unknown to the server; acquiring it again");
          await this.reacquire();
          attempt = 0;
          continue;
        }
        metrics.leaseRenewals.inc({ result: "error" });
        attempt++;
        failures++;
        this.renewFailures = failures;
        // The data plane stays as it is whatever happens here; say why at most every 30 s.
        const now = this.clock.monotonic();
        const fields = { err: (err as Error).message, failures, expiresInMs: Math.round(this.deadline - now), subnet: lease.subnet };
        if (now - lastWarn >= RENEW_WARN_EVERY_MS) {
          lastWarn = now;
          log.warn(fields, this.deadline > now ? "lease renew failed; will retry (the data plane stays as it is)" : "lease renew failed and the lease has run out; will retry (the data plane stays as it is)");
        } else log.debug(fields, "lease renew failed; will retry");
      }
    }
  }

  private async reacquire(): Promise<void> {
    const { client, config, log } = this.deps;
    const old = this.lease!;
    // The device (and its MAC) is the one set up at start; repair() keeps it alive. No second init() here.
    let sent = 0;
    const l = await this.retry("re-acquire lease", () => this.leaseOp(() => {
      // The retries may fail over; never to a server of another store.
      const refused = this.acquireRefusal(client.server);
      if (refused) throw new WeftError("NOT_READY", `not re-acquiring the lease: ${refused}`);
      sent = this.clock.monotonic();
      return client.acquire({ nodeName: config.nodeName, publicIP: this.local!.iface.publicIP, attrs: this.attrs!, previousSubnet: old.subnet, instanceId: this.instanceId });
    }));
    this.leaseServer = client.server;
    if (l.subnet !== old.subnet) {
      // Pods already hold addresses from the old subnet; only a restart (and re-created pods) can fix that.
      throw new WeftError("LEASE_CONFLICT", `lease changed from ${old.subnet} to ${l.subnet} after expiry; restarting so pods and subnet.env follow`);
    }
    this.onLease(l, sent);
    log.info({ subnet: l.subnet }, "lease re-acquired");
  }

  private async watchLoop(): Promise<void> {
    const { client, log, metrics } = this.deps;
    let revision = 0;
    let attempt = 0;
    /** Watches in a row answered by a server of another store. */
    let refusals = 0;
    while (!this.signal.aborted) {
      const from = this.peers.synced ? revision : 0;
      const server = client.server;
      const stream = new AbortController();
      const end = () => stream.abort();
      this.signal.addEventListener("abort", end, { once: true });
      this.watchServer = server;
      this.rewatch = end;
      let foreign = false;
      let first = true;
      try {
        // Revisions only compare within one store: we send our lease's; a server with another answers with a snapshot.
        for await (const m of client.watch(from, stream.signal, this.leaseStore?.id ?? "")) {
          if (m.kind === "complete" || m.kind === "progress") {
            if (!this.acceptStore(server, m.storeId)) {
              // Not our lease database: its snapshot (collected on the side) is dropped, the peers stay as they are.
              foreign = true;
              break;
            }
            refusals = 0;
            if (first) {
              first = false;
              // After an outage the renew loop may be deep in its back-off; a server of our store answering
              // a new stream is back, and a lease that ran out meanwhile is kept only for a grace period.
              if (this.renewFailures > 0) this.renewKick?.();
            }
          }
          attempt = 0;
          switch (m.kind) {
            case "snapshot":
              if (this.peers.addSnapshotLeases(m.leases) && m.resync && !this.mismatch) log.warn({ from }, "watch history gone; resyncing from a fresh snapshot");
              break;
            case "complete":
              this.peers.completeSnapshot();
              revision = m.revision;
              this.changedAt = revision;
              log.info({ revision, peers: this.peers.size }, "lease snapshot complete");
              this.sync?.request();
              break;
            case "events": {
              let changed = false;
              for (const e of m.events) {
                if (e.revision && e.revision <= revision) continue;
                if (e.lease.nodeName === this.deps.config.nodeName) {
                  if (e.type === "removed") {
                    const current = this.lease && e.lease.subnet === this.lease.subnet && e.revision >= this.lease.revision;
                    if (current && e.reason?.startsWith("revoked") && !this.revoked) this.onRevoked(e.reason);
                    else this.renewKick?.();
                  }
                  continue;
                }
                log.info({ type: e.type, subnet: e.lease.subnet, peer: e.lease.nodeName, revision: e.revision }, "lease event");
                changed = this.peers.applyEvent(e) || changed;
              }
              revision = Math.max(revision, m.revision);
              if (changed) {
                this.changedAt = revision;
                this.sync?.request();
              }
              break;
            }
            case "progress":
              if (this.peers.synced && !this.peers.collecting) revision = Math.max(revision, m.revision);
              break;
          }
          metrics.watchRevision.set(revision);
          this.feedRevision = revision;
          this.progressed();
          metrics.knownPeers.set(this.peers.size);
        }
      } catch (err) {
        if (this.signal.aborted) return;
        if (stream.signal.aborted) continue; // ended on purpose (rewatch): reconnect at once
        if (isWeftError(err, "REVISION_COMPACTED") && revision !== 0) {
          // The server no longer has the history after our revision: start over with a fresh snapshot.
          log.warn({ revision }, "watch revision compacted; resyncing from a fresh snapshot");
          revision = 0;
          continue;
        }
        const delay = backoffDelay(attempt++, 500, 10_000);
        log.warn({ err: (err as Error).message, revision, retryInMs: delay }, "lease watch broke; resuming");
        await sleep(delay, this.signal);
      } finally {
        this.signal.removeEventListener("abort", end);
        this.watchServer = undefined;
        this.rewatch = undefined;
        this.peers.abandonSnapshot();
      }
      if (foreign) {
        // Try the next server (or, with one, the same one once it is fixed) after a pause; the revision is kept for the resume.
        if (client.server === server) client.nextServer();
        const delay = backoffDelay(refusals++, 1000, 30_000);
        log.warn({ server, next: client.server, retryInMs: delay }, "lease watch refused: another lease store; retrying");
        await sleep(delay, this.signal);
      }
    }
  }

  /**
   * Checks the store id of a SNAPSHOT_COMPLETE or PROGRESS from `server`: the first one after acquiring
   * names the store our lease is in; one that differs from it is refused (false) and flagged until a
   * server of our store answers again.
   */
  private acceptStore(server: string, id: string | undefined): boolean {
    const { log, metrics } = this.deps;
    this.serverStores.set(server, id ?? "");
    if (!id) return true; // a server that names no store: nothing to compare
    const store = this.leaseStore;
    if (!store) {
      this.leaseStore = { id, server };
      log.info({ store: id, server, leaseServer: this.leaseServer }, "lease store identified");
      return true;
    }
    if (id === store.id) {
      if (this.mismatch) {
        log.info({ server, store: id }, "a lease server of this node's lease store answers again; following its feed");
        this.mismatch = undefined;
        metrics.storeMismatch.set(0);
        this.updateReady();
      }
      return true;
    }
    if (this.mismatch?.server !== server || this.mismatch.id !== id) {
      log.error({ server, store: id, leaseStoreServer: store.server, leaseStore: store.id, leaseServer: this.leaseServer },
        `${this.mismatchReason(server, id)}. Its lease feed is ignored (the peers stay programmed as they were) and the lease is neither renewed nor re-acquired there`);
    }
    this.mismatch = { id, server };
    metrics.storeMismatch.set(1);
    this.updateReady();
    return false;
  }

  private mismatchReason(server: string, id: string): string {
    const s = this.leaseStore!;
    return `lease server ${server} has store ${id}, but this node's lease is in store ${s.id} (server ${s.server}): it is not the same lease database; fix --server or the servers' --store`;
  }

  /** The store id of `server` when the watch saw it answer for a store other than our lease's. */
  private foreignStore(server: string): string | undefined {
    const id = this.serverStores.get(server);
    return this.leaseStore && id && id !== this.leaseStore.id ? id : undefined;
  }

  /**
   * Why the lease must not be acquired at `server` now, if it must not: a watch answered by another store
   * (until one of ours answers again), `server` known to hold another store, or `server` not yet seen by the
   * watch (it is sent there, so the next try knows).
   */
  private acquireRefusal(server: string): string | undefined {
    if (this.mismatch) return this.mismatchReason(this.mismatch.server, this.mismatch.id);
    const foreign = this.foreignStore(server);
    if (foreign !== undefined) return this.mismatchReason(server, foreign);
    if (this.leaseStore && !this.serverStores.has(server)) {
      if (this.watchServer !== undefined && this.watchServer !== server) this.rewatch?.();
      return `the store of lease server ${server} is not known yet (the watch is being moved there); this node's lease is in store ${this.leaseStore.id}`;
    }
    return undefined;
  }

  private notReadyReasons(): string[] {
    if (!this.lease) return ["no lease yet"];
    const store = this.mismatch ? [this.mismatchReason(this.mismatch.server, this.mismatch.id)] : [];
    if (this.revoked) {
      const inS = Math.max(0, Math.round((this.revoked.retryAt - this.clock.monotonic()) / 1000));
      store.push(`lease ${this.lease.subnet} was ${this.revoked.reason}; acquiring it again in ${inS}s`);
    }
    if (!this.peers.synced) return [...store, "waiting for the lease server's peer snapshot"];
    if (!this.sync?.passDone) return [...store, "peers not programmed yet"];
    return [...store, ...this.sync.problemList()];
  }

  private updateReady(): void {
    const reasons = this.notReadyReasons();
    const ready = reasons.length === 0;
    this.deps.metrics.ready.set(ready ? 1 : 0);
    if (ready && !this.wasReady) this.deps.log.info({ ...this.sync!.counts, ms: Math.round(this.sync!.lastPassMs) }, "ready");
    if (!ready && this.wasReady) this.deps.log.warn({ reasons }, "not ready");
    this.wasReady = ready;
    this.progressed();
  }

  /** The applied revision or the health may have moved. */
  private progressed(): void {
    this.deps.metrics.appliedRevision.set(this.appliedRevision());
    this.reporter?.changed();
  }

  /**
   * The lease-feed revision the kernel reflects: the feed's own when the last successful pass read the
   * peer table as of its last change (later messages changed no peer), else what that pass read.
   */
  private appliedRevision(): number {
    if (!this.sync?.passDone) return 0;
    return this.passApplied >= this.changedAt ? this.feedRevision : this.passApplied;
  }

  private statusReport() {
    const reasons = this.notReadyReasons();
    return {
      nodeName: this.deps.config.nodeName, appliedRevision: this.appliedRevision(), healthy: reasons.length === 0, problems: reasons,
      backend: this.network?.backend.type ?? "", version: WEFT_VERSION, peers: this.sync?.counts.programmed ?? 0, subnet: this.lease?.subnet ?? "",
    };
  }

  view(): AgentView {
    return {
      status: () => {
        const reasons = this.notReadyReasons();
        return { ready: reasons.length === 0, reasons };
      },
      lease: (): LeaseView | undefined => this.lease && {
        subnet: this.lease.subnet, publicIP: this.lease.publicIP, backendType: this.lease.attrs.type,
        expiresAt: new Date(this.lease.expiresAt || 0).toISOString(),
      },
      // The peer watch starts only once the sync exists, so there are no peers without it.
      peers: async (): Promise<PeerView[]> => {
        const sync = this.sync;
        if (!sync) return [];
        const health = await this.backend?.peerHealth?.(true).catch(() => undefined);
        return this.peers.list().map((p) => sync.peerView(p, health?.(p)));
      },
      rotateKey: () => this.rotateKey(),
    };
  }

  /** Stops the loops. Leaves the device, routes and lease in place on purpose. */
  async stop(): Promise<void> {
    this.ac.abort();
    if (this.timer) clearInterval(this.timer);
    if (this.rotationTimer) clearInterval(this.rotationTimer);
    this.unwatch?.();
    this.renewKick?.();
    await this.sync?.stop();
    this.backend?.close?.();
    this.deps.client.close();
    this.deps.dataplane.close();
  }
}
