import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { Reconciler } from "../src/reconciler.js";
import { peer, silentLog, vxlanOnFake } from "./helpers/fixtures.js";

const tmp = () => mkdtempSync(join(tmpdir(), "weft-rec-"));

describe("Reconciler on a FakeDataplane", () => {
  it("programs ARP, FDB and route per peer, routes last, and is idempotent", async () => {
    const { dp, backend } = await vxlanOnFake(tmp());
    const rec = new Reconciler(dp, backend, silentLog);
    dp.calls.length = 0;
    const r = await rec.reconcile([peer(2), peer(3)]);
    expect(r).toMatchObject({ added: 6, deleted: 0, errors: 0 });
    expect([...r.programmed].sort()).toEqual(["10.244.2.0/24", "10.244.3.0/24"]);
    const kinds = dp.calls.filter((c) => !c.startsWith("list")).map((c) => c.split(" ")[0]);
    expect(kinds.lastIndexOf("replaceNeighbour")).toBeLessThan(kinds.indexOf("replaceRoute"));
    expect(kinds.lastIndexOf("replaceFdb")).toBeLessThan(kinds.indexOf("replaceRoute"));
    expect(dp.routes.get("10.244.2.0/24")).toEqual({ dst: "10.244.2.0/24", gateway: "10.244.2.0", oif: backend.deviceIndex, onlink: true });
    expect(dp.neighbours.get(`${backend.deviceIndex}|10.244.2.0`)?.mac).toBe("0e:00:00:00:00:02");
    expect([...dp.fdb.values()].find((f) => f.mac === "0e:00:00:00:00:02")?.dst).toBe("198.18.0.2");
    dp.calls.length = 0;
    const again = await rec.reconcile([peer(2), peer(3)]);
    expect(again).toMatchObject({ added: 0, deleted: 0, errors: 0 });
    expect(dp.calls.filter((c) => !c.startsWith("list"))).toEqual([]);
  });

  it("prunes a vanished peer (route first) and touches nothing it does not own", async () => {
    const { dp, backend } = await vxlanOnFake(tmp());
    const rec = new Reconciler(dp, backend, silentLog);
    dp.foreignRoutes.set("10.99.0.0/24", { dst: "10.99.0.0/24", gateway: "198.18.0.9", oif: 2, onlink: false });
    dp.neighbours.set("2|198.18.0.9", { index: 2, ip: "198.18.0.9", mac: "0e:99:00:00:00:01" });
    await rec.reconcile([peer(2), peer(3)]);
    dp.calls.length = 0;
    const r = await rec.reconcile([peer(2)]);
    expect(r.deleted).toBe(3);
    const muts = dp.calls.filter((c) => !c.startsWith("list"));
    expect(muts[0]).toBe("deleteRoute 10.244.3.0/24");
    expect(dp.routes.has("10.244.3.0/24")).toBe(false);
    // The fake's deleteRoute would remove a foreign route too, so this fails if the reconciler ever deletes one.
    expect(muts).not.toContain("deleteRoute 10.99.0.0/24");
    expect(dp.foreignRoutes.size).toBe(1);
    expect(dp.neighbours.has("2|198.18.0.9")).toBe(true);
  });

  it("follows a peer whose MAC and public IP changed", async () => {
    const { dp, backend } = await vxlanOnFake(tmp());
    const rec = new Reconciler(dp, backend, silentLog);
    await rec.reconcile([peer(2)]);
    const moved = peer(2, { publicIP: "198.18.0.77", attrs: { type: "vxlan", vni: 1, vtepMac: "0e:00:00:00:77:77" } });
    await rec.reconcile([moved]);
    expect([...dp.fdb.values()]).toEqual([{ index: backend.deviceIndex, mac: "0e:00:00:00:77:77", dst: "198.18.0.77" }]);
    expect([...dp.neighbours.values()].map((n) => n.mac)).toEqual(["0e:00:00:00:77:77"]);
    expect(dp.routes.size).toBe(1);
  });

  it("withholds the route when ARP/FDB fail, and the next pass retries", async () => {
    const { dp, backend } = await vxlanOnFake(tmp());
    const errors: string[] = [];
    const rec = new Reconciler(dp, backend, silentLog, { onError: (op) => errors.push(op) });
    dp.failing.add("replaceFdb");
    const r = await rec.reconcile([peer(2)]);
    expect(r.errors).toBe(1);
    expect(r.programmed.size).toBe(0);
    expect(dp.routes.size).toBe(0);
    expect(errors).toEqual(["fdb_replace"]);
    dp.failing.clear();
    const r2 = await rec.reconcile([peer(2)]);
    expect(r2.programmed.has("10.244.2.0/24")).toBe(true);
    expect(dp.routes.size).toBe(1);
  });

  it("rejects peers with another VNI or backend without failing others", async () => {
    const { dp, backend } = await vxlanOnFake(tmp());
    const rec = new Reconciler(dp, backend, silentLog);
    const r = await rec.reconcile([peer(2), peer(3, { attrs: { type: "vxlan", vni: 9, vtepMac: "0e:00:00:00:00:03" } }), peer(4, { attrs: { type: "host-gw" } })]);
    expect([...r.programmed]).toEqual(["10.244.2.0/24"]);
    expect(r.errors).toBe(0);
    expect([...r.rejected.keys()].sort()).toEqual(["10.244.3.0/24", "10.244.4.0/24"]);
    expect(dp.routes.size).toBe(1);
  });

  it("never clobbers a foreign route to a peer's subnet: reports an error and leaves it", async () => {
    const { dp, backend } = await vxlanOnFake(tmp());
    const rec = new Reconciler(dp, backend, silentLog);
    const foreign = { dst: "10.244.3.0/24", gateway: "198.18.0.9", oif: 2, onlink: false };
    dp.foreignRoutes.set(foreign.dst, foreign);
    const r = await rec.reconcile([peer(2), peer(3)]);
    expect(r.errors).toBe(1);
    expect([...r.programmed]).toEqual(["10.244.2.0/24"]);
    expect(dp.foreignRoutes.get(foreign.dst)).toEqual(foreign);
    expect(dp.routes.has(foreign.dst)).toBe(false);
  });
});
