// Wires store, manager, watch hub, gRPC and REST into one running server.
// Used by main.ts and by in-process tests; owns no signals and never exits.
import * as grpc from "@grpc/grpc-js";
import { HealthImplementation } from "grpc-health-check";
import type { FastifyInstance } from "fastify";
import { WeftError, isWeftError } from "../../lib/src/errors.js";
import { createLogger, type Logger } from "../../lib/src/logger.js";
import { networkConfigJson, parseNetworkConfig, subnetCount, type NetworkConfig } from "../../lib/src/net-config.js";
import type { ServerConfig } from "./config.js";
import { LeaseManager, renewIntervalMs, type Clock } from "./lease-manager.js";
import { WatchHub, type WatchHubOptions } from "./watch-hub.js";
import { createLeaseService, frameEncoder, leaseServiceDefinition } from "./grpc-service.js";
import { buildHttpApi } from "./http-api.js";
import { createServerMetrics, hubMetrics, type ServerMetrics } from "./metrics.js";
import { DEFAULT_LIMITS, MAX_REQUEST_BYTES, MAX_STREAMS_PER_CONNECTION, limitsInterceptor, listenWithLimits, type GrpcLimits, type LimitDeps, type LimitedListener } from "./grpc-limits.js";
import { EtcdLeaseStore } from "./store/etcd-lease-store.js";
import { SqliteLeaseStore } from "./store/sqlite-lease-store.js";
import { monitorStore, type StoreHealth } from "./store/monitored-store.js";
import { setupNodeIdentity, type NodeIdentity } from "./identity/setup.js";
import { Fleet } from "./fleet.js";
import type { LeaseStore } from "./store/lease-store.js";

export interface RunningServer {
  readonly grpcPort: number;
  readonly httpPort: number;
  readonly manager: LeaseManager;
  readonly hub: WatchHub;
  readonly fleet: Fleet;
  readonly store: LeaseStore;
  readonly metrics: ServerMetrics;
  readonly http: FastifyInstance;
  close(): Promise<void>;
}

export interface StartOptions {
  readonly log?: Logger;
  readonly clock?: Clock;
  readonly store?: LeaseStore;
  readonly hub?: Partial<Pick<WatchHubOptions, "batchWindowMs" | "maxQueueBytes" | "highWaterBytes" | "historyEvents" | "progressIntervalMs">>;
  /** How often expired leases are swept. */
  readonly sweepIntervalMs?: number;
  /** Overrides of the gRPC limits (tests: a short request timeout). */
  readonly limits?: Partial<GrpcLimits>;
}

function openStore(cfg: ServerConfig, log: Logger, historyEvents: number): LeaseStore {
  const s = cfg.store;
  if (s.kind === "sqlite") return new SqliteLeaseStore(s.path, { historyLimit: historyEvents, initStore: cfg.initStore });
  return new EtcdLeaseStore({ endpoints: s.endpoints, prefix: s.prefix, tls: s.tls, auth: s.auth, log: log.child({ component: "etcd" }), expiryGraceMs: renewIntervalMs(cfg.leaseTtlMs) });
}

/**
 * The network config. With etcd every server must use the same one: the first server stores its file's
 * config at <prefix>/config, later ones may start without a file, and one whose file says otherwise
 * refuses to start (two allocation policies on one store would hand out overlapping subnets).
 */
async function resolveNetwork(cfg: ServerConfig, store: LeaseStore): Promise<NetworkConfig> {
  if (!(store instanceof EtcdLeaseStore)) {
    if (!cfg.network) throw new WeftError("CONFIG_INVALID", "no network config: pass --network-config FILE");
    return cfg.network;
  }
  const stored = await store.networkConfig(cfg.network && networkConfigJson(cfg.network));
  if (stored === undefined) {
    throw new WeftError("CONFIG_INVALID", `no network config: pass --network-config FILE, or put it in etcd: etcdctl put ${store.prefix}/config '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}'`);
  }
  let fromEtcd: NetworkConfig;
  try {
    fromEtcd = parseNetworkConfig(stored);
  } catch (err) {
    throw new WeftError("CONFIG_INVALID", `etcd key ${store.prefix}/config: ${(err as Error).message.replace(/^network config: /, "")}`, { cause: err });
  }
  if (cfg.network && networkConfigJson(cfg.network) !== networkConfigJson(fromEtcd)) {
    throw new WeftError("CONFIG_INVALID", `${cfg.networkSource} differs from the network config the other lease servers use (etcd key ${store.prefix}/config: ${networkConfigJson(fromEtcd).trim()}); start without --network-config to use that one, or change the key in etcd for all servers`);
  }
  return fromEtcd;
}

export async function startLeaseServer(cfg: ServerConfig, opts: StartOptions = {}): Promise<RunningServer> {
  const log = opts.log ?? createLogger("lease-server", cfg.logLevel);
  const metrics = createServerMetrics();
  const historyEvents = opts.hub?.historyEvents ?? 10_000;
  // Set once the gRPC health service exists; failing writes can start earlier.
  let storeHealthChanged = (_h: StoreHealth) => {};
  const monitored = monitorStore(opts.store ?? openStore(cfg, log, historyEvents), { log: log.child({ component: "store" }), onChange: (h) => storeHealthChanged(h) });
  const store = monitored.store;
  let network: NetworkConfig;
  let identity: NodeIdentity | undefined;
  try {
    network = await resolveNetwork(cfg, store);
    identity = await setupNodeIdentity(cfg, store, log, opts.clock);
  } catch (err) {
    await store.close();
    throw err;
  }
  const manager = new LeaseManager({
    store, network, ttlMs: cfg.leaseTtlMs, log, clock: opts.clock,
    // With TLS every call carries a verified certificate for its node name: that is the identity.
    bindInstances: !cfg.tls, allowLinkLocalPublicIp: cfg.allowLinkLocalPublicIp,
    onAcquire: (outcome, s) => { metrics.acquires.inc({ outcome }); metrics.acquireSeconds.observe(s); },
    onRenew: (outcome, s) => { metrics.renews.inc({ outcome }); metrics.renewSeconds.observe(s); },
  });
  // Leases that ran out while the server was down go before anyone sees them, except those that expired
  // during the outage itself: they get a grace period of one renew interval (LeaseManager.expire).
  // A store that cannot write (disk full) starts the server not ready rather than not at all.
  await manager.expire().catch((err) => {
    if (!isWeftError(err) || err.code !== "STORE_UNAVAILABLE") throw err;
  });
  // The hub tells the fleet what changed; the fleet reads the hub's leases and revision.
  const fleet: Fleet = new Fleet({
    revision: () => hub.revision, leases: () => hub.leases(),
    onConverged: (s) => metrics.convergenceSeconds.observe(s), onGaveUp: () => metrics.convergenceGaveUp.inc(),
  });
  const hub: WatchHub = new WatchHub({ store, encoder: frameEncoder, log, metrics: hubMetrics(metrics), ...opts.hub, historyEvents, onCommit: (evs, at) => fleet.committed(evs, at) });
  await hub.start();

  // Gauges are read at scrape time, so lease changes cost the hot path nothing.
  metrics.subnetsTotal.set(subnetCount(network));
  metrics.buildInfo.setBackend(network.backend.type);
  metrics.observe({
    leases: () => hub.leaseCount,
    revision: () => hub.revision,
    reservations: async () => (await store.listReservations()).length,
    agents: () => fleet.counts(),
  });

  // Expired leases are swept here; a failed sweep is retried on the next tick.
  let sweeping = false;
  const sweep = setInterval(() => {
    if (sweeping) return;
    sweeping = true;
    manager.expire()
      .then((gone) => metrics.expired.inc(gone.length))
      // Store failures are logged by the store monitor, rate-limited.
      .catch((err) => { if (!isWeftError(err) || err.code !== "STORE_UNAVAILABLE") log.warn({ err }, "expiry sweep failed; will retry"); })
      .finally(() => (sweeping = false));
  }, opts.sweepIntervalMs ?? Math.min(1000, Math.max(100, cfg.leaseTtlMs / 10)));
  sweep.unref();

  const limitDeps: LimitDeps = {
    limits: { ...DEFAULT_LIMITS, ...cfg.limits, ...opts.limits },
    log: log.child({ component: "grpc-limits" }),
    rejected: (limit) => metrics.limitRejections.inc({ limit }),
  };
  const grpcServer = new grpc.Server({
    interceptors: [limitsInterceptor(limitDeps)],
    "grpc.max_receive_message_length": MAX_REQUEST_BYTES,
    "grpc.max_concurrent_streams": MAX_STREAMS_PER_CONNECTION,
    "grpc.keepalive_time_ms": 30_000,
    "grpc.keepalive_timeout_ms": 10_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.min_ping_interval_without_data_ms": 10_000,
    // Channelz bookkeeping runs on every call and message of every watch
    // stream; nothing here reads it (bench:fanout, docs/benchmarks.md).
    "grpc.enable_channelz": 0,
  });
  grpcServer.addService(leaseServiceDefinition, createLeaseService({ manager, hub, fleet, log, requireClientIdentity: !!cfg.tls, onReport: () => metrics.agentReports.inc() }));
  identity?.addTo(grpcServer);
  const health = new HealthImplementation({ "": "SERVING", "weft.v1.LeaseService": "SERVING" });
  health.addToServer(grpcServer);
  let closing = false;
  storeHealthChanged = (h) => {
    for (const service of ["", "weft.v1.LeaseService"]) health.setStatus(service, h.ok && !closing ? "SERVING" : "NOT_SERVING");
  };
  if (!monitored.health().ok) storeHealthChanged(monitored.health());
  const creds = identity?.credentials ?? grpc.ServerCredentials.createInsecure();
  const ready = () => !closing && monitored.health().ok;
  const notReadyReason = () => (closing ? "shutting down" : monitored.health().reason && `lease store writes fail: ${monitored.health().reason}`);
  const http = await buildHttpApi({
    manager, store, metrics, log, ready, notReadyReason, joinTokens: identity?.tokens, fleet,
    admin: { token: cfg.adminToken, clientCertificates: !!cfg.httpTls?.clientCa }, https: cfg.httpTls,
  });
  let grpcPort = 0;
  let flag = "listen";
  let listener: LimitedListener | undefined;
  try {
    listener = await listenWithLimits(grpcServer, creds, cfg.listen.host, cfg.listen.port, limitDeps);
    grpcPort = listener.port;
    flag = "http-listen";
    await http.listen({ host: cfg.httpListen.host, port: cfg.httpListen.port });
  } catch (err) {
    listener?.close();
    grpcServer.forceShutdown();
    clearInterval(sweep);
    hub.stop();
    fleet.close();
    await http.close();
    await store.close();
    const addr = flag === "listen" ? cfg.listen : cfg.httpListen;
    throw new WeftError("CONFIG_INVALID", `--${flag} ${addr.host}:${addr.port}: cannot listen (${(err as Error).message}); pick a free port or address`, { cause: err });
  }
  const httpPort = (http.server.address() as { port: number }).port;
  log.info({ grpc: `${cfg.listen.host}:${grpcPort}`, http: `${cfg.httpListen.host}:${httpPort}`, https: !!cfg.httpTls, adminToken: !!cfg.adminToken, adminCertificates: !!cfg.httpTls?.clientCa, tls: !!cfg.tls, mtls: !!cfg.tls, nodeCa: identity?.ca.source, revision: hub.revision }, "lease server listening");

  return {
    grpcPort, httpPort, manager, hub, fleet, store, metrics, http,
    async close() {
      closing = true;
      health.setStatus("", "NOT_SERVING");
      clearInterval(sweep);
      listener?.close();
      hub.stop();
      fleet.close();
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => { grpcServer.forceShutdown(); resolve(); }, 2000);
        grpcServer.tryShutdown(() => { clearTimeout(t); resolve(); });
      });
      await http.close();
      await store.close();
    },
  };
}
