// Fleet state from agents' reports, on a fake clock: states, convergence, streams ending.
import { afterEach, describe, expect, it } from "vitest";
import { Fleet, type FleetChanges, type NodeReport } from "../src/fleet.js";
import type { Lease, LeaseEvent } from "../../lib/src/lease.js";

const lease = (i: number, revision = i): Lease => ({
  subnet: `10.244.${i}.0/24`, nodeName: `n${i}`, publicIP: `198.18.0.${i}`, attrs: { type: "host-gw" }, expiresAt: 1_900_000_000_000, revision,
});
const report = (applied: number, over: Partial<NodeReport> = {}): NodeReport => ({
  appliedRevision: applied, healthy: true, problems: [], backend: "host-gw", version: "0.1.0", peers: 2, subnet: "", ...over,
});

function setup(staleMs = 35_000) {
  const clock = { wall: 1_800_000_000_000, mono: 0 };
  const leases = new Map<string, Lease>();
  let revision = 0;
  const converged: number[] = [];
  let gaveUp = 0;
  const ended: string[] = [];
  const fleet = new Fleet({
    revision: () => revision, leases: () => leases.values(), staleMs, maxWaitMs: 60_000, batchMs: 10,
    clock: { now: () => clock.wall, monotonic: () => clock.mono },
    onConverged: (s) => converged.push(s), onGaveUp: () => gaveUp++,
  });
  /** A lease change committed at the current time, as the hub reports it. */
  const commit = (l: Lease, type: LeaseEvent["type"] = "added") => {
    revision++;
    const at = { ...l, revision };
    if (type === "removed") leases.delete(l.subnet);
    else leases.set(l.subnet, at);
    fleet.committed([{ type, lease: at, revision }], clock.mono);
  };
  const connect = (name: string) => fleet.connect(name, (why) => ended.push(`${name}: ${why}`));
  return { fleet, clock, commit, connect, converged, ended, gaveUp: () => gaveUp, get revision() { return revision; } };
}

let current: Fleet | undefined;
afterEach(() => current?.close());

describe("Fleet", () => {
  it("derives each node's state from its lease and its reports", () => {
    const t = setup();
    current = t.fleet;
    t.commit(lease(1));
    t.commit(lease(2));
    t.commit(lease(3));
    t.commit(lease(4));
    const n1 = t.connect("n1");
    n1.report(report(4));
    const n2 = t.connect("n2");
    n2.report(report(3));
    t.connect("n3").report(report(4, { healthy: false, problems: ["peers not programmed yet"] }));
    // n4 holds a lease and never connected; n5 reports without a lease.
    t.connect("n5").report(report(4));
    expect(t.fleet.counts()).toEqual({ converged: 2, lagging: 1, unhealthy: 1, disconnected: 1 });
    const { nodes, revision, agents } = t.fleet.nodes();
    expect(revision).toBe(4);
    expect(agents.disconnected).toBe(1);
    expect(nodes.map((n) => [n.nodeName, n.state, n.subnet])).toEqual([
      ["n1", "converged", "10.244.1.0/24"], ["n2", "lagging", "10.244.2.0/24"], ["n3", "unhealthy", "10.244.3.0/24"], ["n4", "disconnected", "10.244.4.0/24"], ["n5", "converged", null],
    ]);
    const n2json = nodes[1]!;
    expect(n2json).toMatchObject({ connected: true, appliedRevision: 3, lagRevisions: 1, healthy: true, peers: 2, agentVersion: "0.1.0", publicIP: "198.18.0.2", backendType: "host-gw", leaseRevision: 2 });
    expect(n2json.lastReportAt).toBe(new Date(t.clock.wall).toISOString());
    expect(nodes[2]!.problems).toEqual(["peers not programmed yet"]);
    expect(nodes[3]).toMatchObject({ connected: false, appliedRevision: null, healthy: null, lastReportAt: null });
    n2.close();
    expect(t.fleet.counts()).toEqual({ converged: 2, lagging: 0, unhealthy: 1, disconnected: 2 });
  });

  it("observes a revision's convergence when the last connected agent applies it, once", () => {
    const t = setup();
    current = t.fleet;
    const a = t.connect("n1");
    const b = t.connect("n2");
    a.report(report(0));
    b.report(report(0));
    t.clock.mono = 1000;
    t.commit(lease(1));
    t.clock.mono = 1040;
    a.report(report(1));
    expect(t.converged).toEqual([]);
    expect(t.fleet.summary().convergence.pendingRevisions).toBe(1);
    t.clock.mono = 1250;
    b.report(report(1));
    expect(t.converged).toEqual([0.25]);
    b.report(report(1));
    expect(t.converged).toEqual([0.25]);
    expect(t.fleet.summary().convergence).toEqual({ lastSeconds: 0.25, lastRevision: 1, pendingRevisions: 0 });
  });

  it("settles several pending revisions at once, and an agent that leaves no longer holds them up", () => {
    const t = setup();
    current = t.fleet;
    const a = t.connect("n1");
    const b = t.connect("n2");
    a.report(report(0));
    b.report(report(0));
    t.commit(lease(1));
    t.clock.mono = 100;
    t.commit(lease(2));
    t.clock.mono = 300;
    a.report(report(2));
    expect(t.converged).toEqual([]);
    b.close();
    expect(t.converged).toEqual([0.3, 0.2]);
  });

  it("counts an agent that jumps past the head without it ever being behind", () => {
    const t = setup();
    current = t.fleet;
    const a = t.connect("n1");
    a.report(report(0));
    t.commit(lease(1));
    // A new agent whose first report is already current does not hold the revision up.
    t.connect("n2").report(report(1));
    expect(t.converged).toEqual([]);
    a.report(report(1));
    expect(t.converged).toHaveLength(1);
  });

  it("does not measure convergence with no agent connected", () => {
    const t = setup();
    current = t.fleet;
    t.commit(lease(1));
    expect(t.fleet.summary().convergence.pendingRevisions).toBe(0);
    t.connect("n1").report(report(1));
    expect(t.converged).toEqual([]);
  });

  it("ends streams that went silent, a replaced stream, and every stream on close", () => {
    const t = setup(30_000);
    current = t.fleet;
    t.commit(lease(1));
    const old = t.connect("n1");
    old.report(report(0));
    const again = t.connect("n1");
    expect(t.ended).toEqual(["n1: a newer status stream for this node replaced this one"]);
    // The old stream's late messages and close change nothing.
    old.report(report(1, { healthy: false }));
    old.close();
    again.report(report(1));
    expect(t.fleet.counts().converged).toBe(1);
    t.clock.mono = 31_000;
    t.fleet.sweep();
    expect(t.ended[1]).toBe("n1: no status report for 30 s");
    expect(t.fleet.counts()).toEqual({ converged: 0, lagging: 0, unhealthy: 0, disconnected: 1 });
    t.connect("n2");
    t.fleet.close();
    expect(t.ended[2]).toBe("n2: lease server is shutting down");
  });

  it("gives up on a revision an agent never applies", () => {
    const t = setup();
    current = t.fleet;
    const a = t.connect("n1");
    a.report(report(0));
    t.commit(lease(1));
    t.clock.mono = 50_000;
    a.report(report(0)); // heartbeat, still behind
    t.clock.mono = 61_000;
    t.fleet.sweep();
    expect(t.gaveUp()).toBe(1);
    expect(t.fleet.summary().convergence.pendingRevisions).toBe(0);
    t.commit(lease(2));
    a.report(report(2));
    expect(t.converged).toEqual([0]);
  });

  it("tells listeners what changed, batched, and not heartbeats", async () => {
    const t = setup();
    current = t.fleet;
    const seen: FleetChanges[] = [];
    const unsubscribe = t.fleet.subscribe((c) => seen.push(c));
    const a = t.connect("n1");
    t.commit(lease(1));
    a.report(report(1));
    t.commit(lease(2));
    await new Promise((r) => setTimeout(r, 30));
    expect(seen).toHaveLength(1);
    expect(seen[0]!.nodes.map((n) => n.nodeName).sort()).toEqual(["n1", "n2"]);
    expect(seen[0]!.summary.revision).toBe(2);
    a.report(report(1));
    await new Promise((r) => setTimeout(r, 30));
    expect(seen).toHaveLength(1);
    t.commit(lease(2), "removed");
    await new Promise((r) => setTimeout(r, 30));
    expect(seen[1]!.removed).toEqual(["n2"]);
    unsubscribe();
    t.commit(lease(3));
    await new Promise((r) => setTimeout(r, 30));
    expect(seen).toHaveLength(2);
  });
});
