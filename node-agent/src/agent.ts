// The agent's lifecycle, in Flannel's start-up order: network config from the
// server, external interface, backend device (weft devices of another backend
// are removed first), lease (with the device's attributes), device address,
// masquerade and forward rules, subnet.env; then these loops run until stop():
//   - renew: at half the remaining TTL, retried with backoff and jitter;
//     re-acquires when the server no longer knows the lease;
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
import { removeStaleDevices } from "./backends/owned-devices.js";
import { backoffDelay, clampTimerMs, sleep } from "./backoff.js";
import type { AgentConfig } from "./config.js";
import type { Dataplane } from "./dataplane/dataplane.js";
import { DataplaneSync } from "./dataplane-sync.js";
import type { FirewallOptions, RuleSet } from "./firewall/firewall.js";
import { selectInterface } from "./iface.js";
import type { LeaseApi } from "./lease-client.js";
import type { AgentMetrics } from "./metrics.js";
import { PeerTable } from "./peer-table.js";
import { Reconciler } from "./reconciler.js";
import { AgentState } from "./state.js";
import { readPreviousSubnet, writeSubnetEnv } from "./subnet-env.js";

export interface AgentDeps {
  readonly config: AgentConfig;
  readonly dataplane: Dataplane;
  readonly client: LeaseApi;
  readonly log: Logger;
  readonly metrics: AgentMetrics;
  /** The masquerade and forward rules for this node (firewall.ts on a real host). */
  readonly firewall: (o: FirewallOptions) => RuleSet;
}

/** Errors that retrying cannot fix. */
const PERMANENT = new Set(["CONFIG_INVALID", "INVALID_ARGUMENT", "PERMISSION_DENIED"]);

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
  /** Attributes published (at start-up, or since by announce()); a re-acquire reuses them (no second device set-up). */
  private attrs: BackendAttrs | undefined;
  private wasReady = false;
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
    this.peers = new PeerTable(deps.config.nodeName);
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
    const iface = await selectInterface(dataplane, { iface: config.iface, publicIP: config.publicIP });
    log.info({ iface: iface.name, ip: iface.ip, publicIP: iface.publicIP, mtu: iface.mtu }, "external interface selected");
    this.local = { nodeName: config.nodeName, network: this.network, iface };

    const backend = createBackend({
      dataplane, network: this.network, vxlanDevice: config.vxlanDevice,
      wireguard: { device: config.wireguardDevice, presharedKey: config.wireguardPsk, stateDir: config.stateDir },
      state: new AgentState(config.stateDir, log.child({ component: "state" })), log: log.child({ component: this.network.backend.type }),
      announce: (a) => this.announce(a),
    });
    this.backend = backend;
    // A backend change in the network config takes effect here: the old backend's devices go.
    await removeStaleDevices(dataplane, backend.devices, log);
    const attrs = await backend.init(this.local);
    this.attrs = attrs;

    const previousSubnet = await readPreviousSubnet(config.subnetFile);
    this.lease = await this.retry("acquire lease", () => client.acquire({ nodeName: config.nodeName, publicIP: iface.publicIP, attrs, previousSubnet }));
    this.leaseServer = client.server;
    this.onLease(this.lease);
    log.info({ subnet: this.lease.subnet, previousSubnet, expiresAt: new Date(this.lease.expiresAt).toISOString(), server: this.leaseServer }, "lease acquired");
    await backend.configureSubnet(this.lease);

    // Flannel's order: the rules are in place before subnet.env says FLANNEL_IPMASQ=true.
    const subnet = parseCidr(this.lease.subnet)!;
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
      backend, firewall, reconciler, peers: () => (this.peers.synced ? this.peers.list() : undefined), underlayIndex: iface.index,
      resyncIntervalMs: config.resyncIntervalMs, log, metrics, signal: this.signal, onPass: () => this.updateReady(),
    });
    this.sync = sync;
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
      const l = await client.acquire({ nodeName: config.nodeName, publicIP: this.local!.iface.publicIP, attrs, previousSubnet: old.subnet });
      this.attrs = attrs;
      if (l.subnet !== old.subnet) {
        this.die(new WeftError("LEASE_CONFLICT", `lease changed from ${old.subnet} to ${l.subnet} while publishing new backend attributes (it had expired); restarting so pods and subnet.env follow`));
        return;
      }
      this.onLease(l);
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

  private onLease(l: Lease): void {
    this.lease = l;
    this.deps.metrics.leaseExpiry.set(l.expiresAt / 1000);
  }

  private async renewLoop(): Promise<void> {
    const { client, config, log, metrics } = this.deps;
    let attempt = 0;
    while (!this.signal.aborted) {
      const lease = this.lease!;
      const remaining = lease.expiresAt ? lease.expiresAt - Date.now() : 3_600_000;
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
      if (!lease.expiresAt) continue;
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
        this.onLease(await client.renew(config.nodeName, lease.subnet));
        metrics.leaseRenewals.inc({ result: "ok" });
        attempt = 0;
      } catch (err) {
        if (isWeftError(err, "LEASE_NOT_FOUND")) {
          metrics.leaseRenewals.inc({ result: "not_found" });
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
        log.warn({ err: (err as Error).message, attempt, expiresInMs: lease.expiresAt - Date.now() }, "lease renew failed; will retry");
      }
    }
  }

  private async reacquire(): Promise<void> {
    const { client, config, log } = this.deps;
    const old = this.lease!;
    // The device (and its MAC) is the one set up at start; repair() keeps it alive. No second init() here.
    const l = await this.retry("re-acquire lease", () => this.leaseOp(() => {
      // The retries may fail over; never to a server of another store.
      const refused = this.acquireRefusal(client.server);
      if (refused) throw new WeftError("NOT_READY", `not re-acquiring the lease: ${refused}`);
      return client.acquire({ nodeName: config.nodeName, publicIP: this.local!.iface.publicIP, attrs: this.attrs!, previousSubnet: old.subnet });
    }));
    this.leaseServer = client.server;
    if (l.subnet !== old.subnet) {
      // Pods already hold addresses from the old subnet; only a restart (and re-created pods) can fix that.
      throw new WeftError("LEASE_CONFLICT", `lease changed from ${old.subnet} to ${l.subnet} after expiry; restarting so pods and subnet.env follow`);
    }
    this.onLease(l);
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
          }
          attempt = 0;
          switch (m.kind) {
            case "snapshot":
              if (this.peers.addSnapshotLeases(m.leases) && m.resync && !this.mismatch) log.warn({ from }, "watch history gone; resyncing from a fresh snapshot");
              break;
            case "complete":
              this.peers.completeSnapshot();
              revision = m.revision;
              log.info({ revision, peers: this.peers.size }, "lease snapshot complete");
              this.sync?.request();
              break;
            case "events": {
              let changed = false;
              for (const e of m.events) {
                if (e.revision && e.revision <= revision) continue;
                if (e.lease.nodeName === this.deps.config.nodeName) {
                  if (e.type === "removed") this.renewKick?.();
                  continue;
                }
                log.info({ type: e.type, subnet: e.lease.subnet, peer: e.lease.nodeName, revision: e.revision }, "lease event");
                changed = this.peers.applyEvent(e) || changed;
              }
              revision = Math.max(revision, m.revision);
              if (changed) this.sync?.request();
              break;
            }
            case "progress":
              if (this.peers.synced && !this.peers.collecting) revision = Math.max(revision, m.revision);
              break;
          }
          metrics.watchRevision.set(revision);
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
