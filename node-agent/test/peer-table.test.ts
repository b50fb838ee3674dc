import { describe, expect, it } from "vitest";
import { PeerTable, type PeerConflict } from "../src/peer-table.js";
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

  describe("first holder wins", () => {
    const names = (t: PeerTable) => t.list().map((l) => l.nodeName).sort();

    it("sets aside a newcomer claiming a programmed peer's VTEP MAC and public IP; the peer stays", () => {
      const seen: PeerConflict[] = [];
      const t = new PeerTable("node-1", (c) => seen.push(c));
      t.addSnapshotLeases([peer(2), peer(3)]);
      t.completeSnapshot();
      // node-4 publishes node-2's MAC and public IP (a clone, or a node lying in its lease).
      const liar = peer(4, { publicIP: peer(2).publicIP, attrs: peer(2).attrs, revision: 10 });
      expect(t.applyEvent({ type: "added", lease: liar, revision: 10 })).toBe(false);
      expect(names(t)).toEqual(["node-2", "node-3"]);
      expect(t.list().find((l) => l.nodeName === "node-2")).toEqual(peer(2));
      expect(seen.map((c) => [c.lease.nodeName, c.holder.nodeName])).toEqual([["node-4", "node-2"]]);
      expect(t.conflicts()[0]!.detail).toMatch(/^VTEP MAC 0e:00:00:00:00:02 is already held by node-2 \(10\.244\.2\.0\/24\); node-4 is not programmed/);
      // The same claim again changes nothing and is not reported twice.
      expect(t.applyEvent({ type: "changed", lease: { ...liar, revision: 11 }, revision: 11 })).toBe(false);
      expect(seen).toHaveLength(1);
      // A resync snapshot keeps the holder, whatever the order or revisions.
      t.addSnapshotLeases([{ ...liar, revision: 1 }, peer(3), { ...peer(2), revision: 50 }]);
      t.completeSnapshot();
      expect(names(t)).toEqual(["node-2", "node-3"]);
    });

    it("admits the newcomer once the holder's lease is gone, or once it publishes its own attributes", () => {
      const t = new PeerTable("node-1");
      t.completeSnapshot();
      t.applyEvent({ type: "added", lease: peer(2), revision: 2 });
      t.applyEvent({ type: "added", lease: peer(4, { attrs: peer(2).attrs }), revision: 4 });
      t.applyEvent({ type: "added", lease: peer(5, { publicIP: peer(2).publicIP }), revision: 5 });
      expect(names(t)).toEqual(["node-2"]);
      expect(t.applyEvent({ type: "changed", lease: peer(5), revision: 6 })).toBe(true);
      expect(names(t)).toEqual(["node-2", "node-5"]);
      expect(t.applyEvent({ type: "removed", lease: peer(2), revision: 7 })).toBe(true);
      expect(names(t)).toEqual(["node-4", "node-5"]);
      expect(t.conflicts()).toEqual([]);
    });

    it("lets WireGuard peers share a public IP but not a key", () => {
      const wg = (i: number, key: string) => peer(i, { publicIP: "198.18.0.9", attrs: { type: "wireguard", publicKey: key, listenPort: 51820 + i } });
      const t = new PeerTable("node-1");
      t.addSnapshotLeases([wg(2, "a"), wg(3, "b"), wg(4, "a")]);
      t.completeSnapshot();
      expect(names(t)).toEqual(["node-2", "node-3"]);
    });
  });
});
