// The human layouts of views.ts for cases the process tests do not reach
// (a lagging node, pending revisions, an empty fleet, WireGuard-less peers).
import { describe, expect, it } from "vitest";
import { formatSpan, renderTable } from "../src/table.js";
import { nodesView, peersView, type NodesBody } from "../src/views.js";

const NOW = Date.parse("2026-12-07T10:00:00.000Z");
type Node = NodesBody["nodes"][number];
const node = (over: Partial<Node>): Node => ({
  nodeName: "n1", state: "converged", subnet: "10.244.1.0/24", publicIP: "198.18.0.1", backendType: "vxlan", leaseExpiresAt: null, leaseRevision: 3,
  connected: true, appliedRevision: 9, lagRevisions: 0, healthy: true, problems: [], lastReportAt: "2026-12-07T09:59:55.000Z", agentVersion: "0.1.0", peers: 1, ...over,
});

describe("weftctl views", () => {
  it("aligns columns without trailing blanks", () => {
    expect(renderTable(["A", "BB", "C"], [["xxx", "y", ""], ["", "", "z"]])).toBe("A    BB  C\nxxx  y\n         z\n");
  });

  it("formats spans coarsely", () => {
    expect([0, 59_000, 119_000, 120_000, 3_600_000, 5_400_000, 7_200_000, 7_260_000, 49 * 3_600_000].map(formatSpan))
      .toEqual(["0s", "59s", "119s", "2m", "60m", "90m", "2h", "2h1m", "2d"]);
  });

  it("shows a lagging node's lag, pending revisions, and an empty fleet", () => {
    const body: NodesBody = {
      revision: 12, agents: { converged: 1, lagging: 1, unhealthy: 0, disconnected: 0 },
      convergence: { lastSeconds: 1.5, lastRevision: 9, pendingRevisions: 3 },
      nodes: [node({}), node({ nodeName: "n2", subnet: null, publicIP: null, backendType: null, state: "lagging", appliedRevision: 9, lagRevisions: 3, lastReportAt: "2026-12-07T09:57:00.000Z" })],
    };
    const out = nodesView(body, NOW);
    expect(out).toMatch(/^n2\s+-\s+-\s+-\s+lagging\s+9\s+3\s+ok\s+3m ago$/m);
    expect(out).not.toContain("problems:");
    expect(out.endsWith("\nrevision 12: 1 converged, 1 lagging, 0 unhealthy, 0 disconnected; last change converged in 1.50 s (revision 9); 3 revisions pending\n")).toBe(true);
    const empty = nodesView({ ...body, agents: { converged: 0, lagging: 0, unhealthy: 0, disconnected: 0 }, convergence: { lastSeconds: null, lastRevision: null, pendingRevisions: 0 }, nodes: [] }, NOW);
    expect(empty).toBe("no nodes: no live leases and no agent reports\n\nrevision 12: 0 converged, 0 lagging, 0 unhealthy, 0 disconnected; no change converged yet\n");
  });

  it("leaves the HANDSHAKE column out when no peer uses WireGuard", () => {
    const out = peersView([{ nodeName: "n2", subnet: "10.244.2.0/24", publicIP: "198.18.0.2", programmed: false, state: "pending" }], NOW);
    expect(out).toBe("NODE  SUBNET         PUBLIC-IP   STATE    PATH  REASON\nn2    10.244.2.0/24  198.18.0.2  pending  -     -\n");
  });
});
