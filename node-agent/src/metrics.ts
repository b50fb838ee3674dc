// The agent's Prometheus metrics, on a registry of its own (never the global one).
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { registerProcessMetrics } from "../../lib/src/metrics.js";
import { registerBuildInfo } from "../../lib/src/build-info.js";

export function createAgentMetrics() {
  const registry = new Registry();
  registerProcessMetrics(registry, "weft_agent_");
  const registers = [registry];
  return {
    registry,
    buildInfo: registerBuildInfo(registry),
    peers: new Gauge({ name: "weft_agent_peers", help: "Remote peers whose kernel objects (routes; for VXLAN also ARP and FDB entries) are all programmed", registers }),
    knownPeers: new Gauge({ name: "weft_agent_known_peers", help: "Remote leases known from the lease server", registers }),
    reconcileDuration: new Histogram({
      name: "weft_agent_reconcile_duration_seconds", help: "Duration of reconcile passes", registers,
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    }),
    reconcileErrors: new Counter({ name: "weft_agent_reconcile_errors_total", help: "Failed dataplane operations and failed reconcile passes", labelNames: ["op"] as const, registers }),
    leaseExpiry: new Gauge({ name: "weft_agent_lease_expiry_timestamp_seconds", help: "Unix time at which our lease expires unless renewed", registers }),
    serverConnected: new Gauge({ name: "weft_agent_server_connected", help: "1 when the last exchange with the lease server succeeded, else 0", registers }),
    watchRevision: new Gauge({ name: "weft_agent_watch_revision", help: "Newest lease-feed revision taken in from the watch", registers }),
    appliedRevision: new Gauge({ name: "weft_agent_applied_revision", help: "Lease-feed revision the kernel reflects (every change up to it is programmed); also reported to the lease server", registers }),
    leaseRenewals: new Counter({
      name: "weft_agent_lease_renewals_total", registers, labelNames: ["result"] as const,
      help: "Lease renewals by result: ok, not_found, error, or store_mismatch (not sent: that server has another lease store)",
    }),
    storeMismatch: new Gauge({
      name: "weft_agent_store_mismatch", registers,
      help: "1 while the lease server answering the watch has another lease store than the one this node's lease is in (its feed is refused, the peers stay as they were); else 0",
    }),
    ready: new Gauge({ name: "weft_agent_ready", help: "1 while subnet.env is written and every acceptable peer is programmed; 0 while the data plane cannot be programmed", registers }),
    peersRejected: new Gauge({ name: "weft_agent_peers_rejected", help: "Remote peers the backend refuses to program, by reason (not_on_segment: host-gw peer on another L2 segment)", labelNames: ["reason"] as const, registers }),
    peersUnreachable: new Gauge({ name: "weft_agent_peers_unreachable", help: "Programmed peers the tunnel does not reach (WireGuard: no handshake since they were programmed; see reason in /v1/peers)", registers }),
    peersFailed: new Gauge({ name: "weft_agent_peers_failed", help: "Remote peers whose kernel objects failed to program in the last pass", registers }),
    driftRepairs: new Counter({ name: "weft_agent_drift_repairs_total", help: "Kernel objects put back after something else changed or removed them, by kind", labelNames: ["kind"] as const, registers }),
  };
}

export type AgentMetrics = ReturnType<typeof createAgentMetrics>;
