import { spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { createAgentMetrics } from "../src/metrics.js";
import { requireTools } from "../../test/tools.js";

const hasPromtool = requireTools({ promtool: "prometheus" }, "the metrics lint");

describe("agent metrics", () => {
  it.skipIf(!hasPromtool)("pass promtool's checks", async () => {
    const m = createAgentMetrics();
    m.peers.set(3);
    m.reconcileDuration.observe(0.02);
    m.reconcileErrors.inc({ op: "route" });
    m.leaseRenewals.inc({ result: "ok" });
    m.peersRejected.set({ reason: "not_on_segment" }, 1);
    m.driftRepairs.inc({ kind: "route" });
    const text = await m.registry.metrics();
    for (const name of ["weft_agent_peers 3", "weft_agent_reconcile_duration_seconds_bucket", 'weft_agent_reconcile_errors_total{op="route"} 1', "weft_agent_lease_expiry_timestamp_seconds", "weft_agent_server_connected",
      'weft_agent_peers_rejected{reason="not_on_segment"} 1', 'weft_agent_drift_repairs_total{kind="route"} 1', "weft_agent_peers_failed"]) {
      expect(text).toContain(name);
    }
    const check = spawnSync("promtool", ["check", "metrics"], { input: text, encoding: "utf8" });
    expect(check.stdout + check.stderr).toBe("");
    expect(check.status).toBe(0);
  });
});
