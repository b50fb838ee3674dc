import { describe, expect, it } from "vitest";
import { PeerTable } from "../src/peer-table.js";
import { peer } from "./helpers/fixtures.js";

describe("PeerTable", () => {
  it("ignores our own lease and applies events", () => {
    const t = new PeerTable("node-1");
    expect(t.addSnapshotLeases([peer(1), peer(2)])).toBe(true);
    t.completeSnapshot();
    expect(t.list().map((l) => l.nodeName)).toEqual(["node-2"]);
    expect(t.applyEvent({ type: "added", lease: peer(3), revision: 5 })).toBe(true);
    expect(t.applyEvent({ type: "added", lease: peer(3), revision: 6 })).toBe(false);
    expect(t.applyEvent({ type: "removed", lease: peer(2), revision: 7 })).toBe(true);
    expect(t.list().map((l) => l.nodeName)).toEqual(["node-3"]);
  });

  it("keeps the old view until a new snapshot is complete, and drops an abandoned one", () => {
    const t = new PeerTable("node-1");
    t.addSnapshotLeases([peer(2), peer(3)]);
    t.completeSnapshot();
    t.addSnapshotLeases([peer(2)]);
    expect(t.size).toBe(2);
    t.abandonSnapshot();
    expect(t.size).toBe(2);
    t.addSnapshotLeases([peer(2)]);
    t.completeSnapshot();
    expect(t.list().map((l) => l.subnet)).toEqual(["10.244.2.0/24"]);
  });

  it("does not drop a subnet re-taken by another node on a late removal", () => {
    const t = new PeerTable("node-1");
    t.completeSnapshot();
    t.applyEvent({ type: "added", lease: peer(2, { nodeName: "node-x" }), revision: 1 });
    expect(t.applyEvent({ type: "removed", lease: peer(2), revision: 2 })).toBe(false);
    expect(t.size).toBe(1);
  });
});
