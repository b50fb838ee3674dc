// Wires store, manager, watch hub, gRPC and REST into one running server.
// Used by main.ts and by in-process tests; owns no signals and never exits.
import * as grpc from "@grpc/grpc-js";
import { HealthImplementation } from "grpc-health-check";
import type { FastifyInstance } from "fastify";
import { WeftError } from "../../lib/src/errors.js";
import { createLogger, type Logger } from "../../lib/src/logger.js";
import { networkConfigJson, parseNetworkConfig, subnetCount, type NetworkConfig } from "../../lib/src/net-config.js";
import type { ServerConfig } from "./config.js";
import { LeaseManager, type Clock } from "./lease-manager.js";
import { WatchHub, type WatchHubOptions } from "./watch-hub.js";
import { createLeaseService, frameEncoder, leaseServiceDefinition } from "./grpc-service.js";
import { buildHttpApi } from "./http-api.js";
import { createServerMetrics, hubMetrics, type ServerMetrics } from "./metrics.js";
import { EtcdLeaseStore } from "./store/etcd-lease-store.js";
import { SqliteLeaseStore } from "./store/sqlite-lease-store.js";
import type { LeaseStore } from "./store/lease-store.js";

export interface RunningServer {
  readonly grpcPort: number;
  readonly httpPort: number;
  readonly manager: LeaseManager;
  readonly hub: WatchHub;
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
}

function openStore(cfg: ServerConfig, log: Logger, historyEvents: number): LeaseStore {
  const s = cfg.store;
  if (s.kind === "sqlite") return new SqliteLeaseStore(s.path, { historyLimit: historyEvents });
  return new EtcdLeaseStore({ endpoints: s.endpoints, prefix: s.prefix, tls: s.tls, auth: s.auth, log: log.child({ component: "etcd" }) });
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

function bindGrpc(server: grpc.Server, addr: string, creds: grpc.ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => server.bindAsync(addr, creds, (err, port) => (err ? reject(err) : resolve(port))));
}

export async function startLeaseServer(cfg: ServerConfig, opts: StartOptions = {}): Promise<RunningServer> {
  const log = opts.log ?? createLogger("lease-server", cfg.logLevel);
  const metrics = createServerMetrics();
  const historyEvents = opts.hub?.historyEvents ?? 10_000;
  const store = opts.store ?? openStore(cfg, log, historyEvents);
  let network: NetworkConfig;
  try {
    network = await resolveNetwork(cfg, store);
  } catch (err) {
    await store.close();
    throw err;
  }
  const manager = new LeaseManager({
    store, network, ttlMs: cfg.leaseTtlMs, log, clock: opts.clock,
    onAcquire: (outcome, s) => { metrics.acquires.inc({ outcome }); metrics.acquireSeconds.observe(s); },
    onRenew: (outcome, s) => { metrics.renews.inc({ outcome }); metrics.renewSeconds.observe(s); },
  });
  // Leases that ran out while the server was down go before anyone sees them.
  await manager.expire();
  const hub = new WatchHub({ store, encoder: frameEncoder, log, metrics: hubMetrics(metrics), ...opts.hub, historyEvents });
  await hub.start();

  // Gauges are read at scrape time, so lease changes cost the hot path nothing.
  metrics.subnetsTotal.set(subnetCount(network));
  metrics.observe({
    leases: () => hub.leaseCount,
    revision: () => hub.revision,
    reservations: async () => (await store.listReservations()).length,
  });

  // Expired leases are swept here; a failed sweep is retried on the next tick.
  let sweeping = false;
  const sweep = setInterval(() => {
    if (sweeping) return;
    sweeping = true;
    manager.expire()
      .then((gone) => metrics.expired.inc(gone.length))
      .catch((err) => log.warn({ err }, "expiry sweep failed; will retry"))
      .finally(() => (sweeping = false));
  }, opts.sweepIntervalMs ?? Math.min(1000, Math.max(100, cfg.leaseTtlMs / 10)));
  sweep.unref();

  const grpcServer = new grpc.Server({
    "grpc.keepalive_time_ms": 30_000,
    "grpc.keepalive_timeout_ms": 10_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.min_ping_interval_without_data_ms": 10_000,
    // Channelz bookkeeping runs on every call and message of every watch
    // stream; nothing here reads it (bench:fanout, docs/benchmarks.md).
    "grpc.enable_channelz": 0,
  });
  grpcServer.addService(leaseServiceDefinition, createLeaseService({ manager, hub, log, requireClientIdentity: !!cfg.tls?.clientCa }));
  const health = new HealthImplementation({ "": "SERVING", "weft.v1.LeaseService": "SERVING" });
  health.addToServer(grpcServer);
  const creds = cfg.tls
    ? grpc.ServerCredentials.createSsl(cfg.tls.clientCa ?? null, [{ cert_chain: cfg.tls.cert, private_key: cfg.tls.key }], !!cfg.tls.clientCa)
    : grpc.ServerCredentials.createInsecure();
  const grpcHost = cfg.listen.host.includes(":") ? `[${cfg.listen.host}]` : cfg.listen.host;
  let ready = true;
  const http = await buildHttpApi({ manager, store, metrics, log, ready: () => ready });
  let grpcPort = 0;
  let flag = "listen";
  try {
    grpcPort = await bindGrpc(grpcServer, `${grpcHost}:${cfg.listen.port}`, creds);
    flag = "http-listen";
    await http.listen({ host: cfg.httpListen.host, port: cfg.httpListen.port });
  } catch (err) {
    grpcServer.forceShutdown();
    clearInterval(sweep);
    hub.stop();
    await http.close();
    await store.close();
    const addr = flag === "listen" ? cfg.listen : cfg.httpListen;
    throw new WeftError("CONFIG_INVALID", `--${flag} ${addr.host}:${addr.port}: cannot listen (${(err as Error).message}); pick a free port or address`, { cause: err });
  }
  const httpPort = (http.server.address() as { port: number }).port;
  log.info({ grpc: `${cfg.listen.host}:${grpcPort}`, http: `${cfg.httpListen.host}:${httpPort}`, tls: !!cfg.tls, mtls: !!cfg.tls?.clientCa, revision: hub.revision }, "lease server listening");

  return {
    grpcPort, httpPort, manager, hub, store, metrics, http,
    async close() {
      ready = false;
      health.setStatus("", "NOT_SERVING");
      clearInterval(sweep);
      hub.stop();
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => { grpcServer.forceShutdown(); resolve(); }, 2000);
        grpcServer.tryShutdown(() => { clearTimeout(t); resolve(); });
      });
      await http.close();
      await store.close();
    },
  };
}
