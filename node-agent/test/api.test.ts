import { describe, expect, it } from "vitest";
import { buildApi, type AgentView } from "../src/api.js";
import { createAgentMetrics } from "../src/metrics.js";
import { silentLog } from "./helpers/fixtures.js";

describe("agent REST API", () => {
  it("reports readiness, lease, peers and metrics", async () => {
    let ready = false;
    const view: AgentView = {
      status: () => (ready ? { ready, reasons: [] } : { ready, reasons: ["dataplane: 1 of 1 peers not programmed (1 failed operations): replace route 10.244.2.0/24 via 198.18.0.2 dev 2: ENETUNREACH"] }),
      lease: () => ({ subnet: "10.244.3.0/24", publicIP: "198.18.0.3", backendType: "vxlan", expiresAt: "2030-01-01T00:00:00.000Z" }),
      peers: () => [
        { nodeName: "node-2", subnet: "10.244.2.0/24", publicIP: "198.18.0.2", programmed: true, state: "programmed", path: "host-gw" },
        { nodeName: "node-3", subnet: "10.244.3.0/24", publicIP: "198.18.1.3", programmed: false, state: "rejected", reason: "public IP 198.18.1.3 is not on eth0's subnet 198.18.0.0/24" },
      ],
    };
    const metrics = createAgentMetrics();
    metrics.peers.set(1);
    const app = buildApi({ view, registry: metrics.registry, log: silentLog });
    expect((await app.inject("/healthz")).statusCode).toBe(200);
    const notReady = await app.inject("/readyz");
    expect(notReady.statusCode).toBe(503);
    expect(notReady.body).toBe("not ready: dataplane: 1 of 1 peers not programmed (1 failed operations): replace route 10.244.2.0/24 via 198.18.0.2 dev 2: ENETUNREACH");
    ready = true;
    expect((await app.inject("/readyz")).statusCode).toBe(200);
    expect((await app.inject("/v1/lease")).json()).toEqual(view.lease());
    expect((await app.inject("/v1/peers")).json()).toEqual(view.peers());
    const m = await app.inject("/metrics");
    expect(m.body).toMatch(/^weft_agent_peers 1$/m);
    for (const name of ["weft_agent_reconcile_duration_seconds", "weft_agent_reconcile_errors_total", "weft_agent_lease_expiry_timestamp_seconds", "weft_agent_server_connected"]) {
      expect(m.body).toContain(`# TYPE ${name}`);
    }
    await app.close();
  });
});
