// The tables' `same` must agree with their `key` exactly: the reconciler
// compares with `same` alone (no keys kept), and a disagreement would either
// miss a change (no repair) or rewrite unchanged objects on every pass.
import { describe, expect, it } from "vitest";
import { fdbKey, fdbSame, neighbourKey, neighbourSame, routeKey, routeSame, type FdbEntry, type Neighbour, type Route } from "../src/dataplane/dataplane.js";

/** Every object with one field changed, plus the object itself rebuilt (a different object, equal). */
function variants<T extends object>(base: T, changes: Partial<Record<keyof T, unknown[]>>): T[] {
  const out: T[] = [{ ...base }];
  for (const [k, vs] of Object.entries(changes) as Array<[string, unknown[]]>) for (const v of vs) out.push({ ...base, [k]: v } as T);
  return out;
}

function agrees<T extends object>(objs: T[], key: (o: T) => string, same: (a: T, b: T) => boolean): void {
  for (const a of objs) for (const b of objs) expect([same(a, b), JSON.stringify(a), JSON.stringify(b)]).toEqual([key(a) === key(b), JSON.stringify(a), JSON.stringify(b)]);
}

describe("KernelTable.same agrees with key", () => {
  it("routes", () => {
    const base: Route = { dst: "10.244.2.0/24", gateway: "10.244.2.0", oif: 5, onlink: true };
    const objs = variants(base, { dst: ["10.244.3.0/24"], gateway: ["10.244.3.0", undefined], oif: [6], onlink: [false] });
    objs.push({ dst: "10.244.2.0/24", oif: 5, onlink: true });
    agrees(objs, routeKey, routeSame);
  });

  it("ARP entries", () => {
    agrees(variants<Neighbour>({ index: 5, ip: "10.244.2.0", mac: "0e:00:00:00:00:02" }, { index: [6], ip: ["10.244.3.0"], mac: ["0e:00:00:00:00:03"] }), neighbourKey, neighbourSame);
  });

  it("FDB entries", () => {
    agrees(variants<FdbEntry>({ index: 5, mac: "0e:00:00:00:00:02", dst: "198.18.0.2" }, { index: [6], mac: ["0e:00:00:00:00:03"], dst: ["198.18.0.3"] }), fdbKey, fdbSame);
  });
});
