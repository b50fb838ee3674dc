// Prometheus metrics of the lease server, on their own registry.
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { registerProcessMetrics } from "../../lib/src/metrics.js";
import { registerBuildInfo } from "../../lib/src/build-info.js";
import type { WatchHubMetrics } from "./watch-hub.js";
import { AGENT_STATES, type AgentState } from "./fleet.js";

const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

export function createServerMetrics() {
  const registry = new Registry();
  registerProcessMetrics(registry, "weft_lease_server_");
  const registers = [registry];
  // Scrape-time sources for the gauges below; server.ts binds them with observe().
  const src = {
    leases: () => 0, revision: () => 0, reservations: async () => 0,
    agents: (): Record<AgentState, number> => ({ converged: 0, lagging: 0, unhealthy: 0, disconnected: 0 }),
  };
  const m = {
    registry,
    leases: new Gauge({ name: "weft_lease_server_leases", help: "Live subnet leases.", registers, collect() { this.set(src.leases()); } }),
    subnetsTotal: new Gauge({ name: "weft_lease_server_subnets", help: "Node subnets the network can hand out (SubnetMin..SubnetMax).", registers }),
    reservations: new Gauge({ name: "weft_lease_server_reservations", help: "Subnets reserved for a node name.", registers, async collect() { this.set(await src.reservations()); } }),
    revision: new Gauge({ name: "weft_lease_server_revision", help: "Revision of the newest lease change sent to watchers.", registers, collect() { this.set(src.revision()); } }),
    acquires: new Counter({ name: "weft_lease_server_acquire_total", help: "AcquireLease calls by outcome.", labelNames: ["outcome"] as const, registers }),
    acquireSeconds: new Histogram({ name: "weft_lease_server_acquire_duration_seconds", help: "AcquireLease latency.", buckets: LATENCY_BUCKETS, registers }),
    renews: new Counter({ name: "weft_lease_server_renew_total", help: "RenewLease calls by outcome.", labelNames: ["outcome"] as const, registers }),
    renewSeconds: new Histogram({ name: "weft_lease_server_renew_duration_seconds", help: "RenewLease latency.", buckets: LATENCY_BUCKETS, registers }),
    expired: new Counter({ name: "weft_lease_server_leases_expired_total", help: "Leases removed because their TTL ran out.", registers }),
    watchStreams: new Gauge({ name: "weft_lease_server_watch_streams", help: "Open WatchLeases streams.", registers }),
    watchEventsSent: new Counter({ name: "weft_lease_server_watch_events_sent_total", help: "Lease events and snapshot entries written to watch streams (one per stream).", registers }),
    watchMessagesSent: new Counter({ name: "weft_lease_server_watch_messages_sent_total", help: "Messages written to watch streams.", registers }),
    watchDropped: new Counter({ name: "weft_lease_server_watch_streams_dropped_total", help: "Watch streams dropped for falling too far behind.", registers }),
    buildInfo: registerBuildInfo(registry),
    limitRejections: new Counter({ name: "weft_lease_server_limit_rejections_total", help: "Requests, streams or connections refused by a protective limit, by limit.", labelNames: ["limit"] as const, registers }),
    agents: new Gauge({
      name: "weft_lease_server_agents", help: "Nodes by state: converged (applied the newest revision), lagging, unhealthy (reports problems), disconnected (a lease but no status stream to this server).",
      labelNames: ["state"] as const, registers,
      collect() {
        const counts = src.agents();
        for (const state of AGENT_STATES) this.set({ state }, counts[state]);
      },
    }),
    convergenceSeconds: new Histogram({
      name: "weft_lease_server_convergence_seconds", help: "From a lease change reaching this server until every connected agent reported it applied.",
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300], registers,
    }),
    convergenceGaveUp: new Counter({ name: "weft_lease_server_convergence_abandoned_total", help: "Lease changes that some connected agent did not apply within 10 minutes (not in the convergence histogram).", registers }),
    agentReports: new Counter({ name: "weft_lease_server_agent_reports_total", help: "Status reports received from agents (ReportStatus messages).", registers }),
    watchBatch: new Histogram({ name: "weft_lease_server_watch_batch_events", help: "Lease events per fan-out batch.", buckets: [1, 2, 5, 10, 50, 100, 500, 1000, 5000], registers }),
  };
  return {
    ...m,
    /** Binds the scrape-time gauges to their sources. */
    observe(sources: typeof src) {
      Object.assign(src, sources);
    },
  };
}

export type ServerMetrics = ReturnType<typeof createServerMetrics>;

export function hubMetrics(m: ServerMetrics): WatchHubMetrics {
  return {
    streams: (n) => m.watchStreams.set(n),
    eventsSent: (n) => m.watchEventsSent.inc(n),
    framesSent: (n) => m.watchMessagesSent.inc(n),
    dropped: () => m.watchDropped.inc(),
    batch: (n) => m.watchBatch.observe(n),
  };
}
