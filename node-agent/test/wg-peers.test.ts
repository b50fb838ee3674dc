// WgPeerTable: the reconciler's view of the WireGuard device's peers. Batching
// of same-tick puts/removes into one set, the handshake kick for peers new on
// the device, and per-op retries when a batch fails.
import { describe, expect, it } from "vitest";
import { WeftError } from "../../lib/src/errors.js";
import { wgPeerKey, type WgControl, type WgDeviceSet, type WgDeviceStatus, type WgPeerConfig, type WgPeerOp, type WgPeerStatus } from "../src/wireguard/control.js";
import { WgPeerTable } from "../src/wireguard/wg-peers.js";

const key = (n: number) => Buffer.alloc(32, n).toString("base64");
const A = key(1);
const B = key(2);
const C = key(3);
const D = key(4);
const PSK = key(0xab);

const cfg = (publicKey: string, i: number, over: Partial<WgPeerConfig> = {}): WgPeerConfig =>
  ({ publicKey, endpoint: `198.18.0.${i}:51820`, allowedIPs: [`10.244.${i}.0/24`], keepalive: 25, ...over });
const status = (c: WgPeerConfig, over: Partial<WgPeerStatus> = {}): WgPeerStatus =>
  ({ ...c, lastHandshakeMs: 0, rxBytes: 0, txBytes: 0, ...over });

const opKey = (op: WgPeerOp) => (op.op === "put" ? op.peer.publicKey : op.publicKey);

/** Records every set; answers get() with `device`; fails any set that touches a key in `failKeys`. */
class RecordingControl implements WgControl {
  readonly mode = "userspace" as const;
  readonly sets: WgDeviceSet[] = [];
  readonly failKeys = new Set<string>();
  gets = 0;
  constructor(public device: WgDeviceStatus = { listenPort: 51820, peers: [] }) {}

  async get(): Promise<WgDeviceStatus> {
    this.gets++;
    return this.device;
  }

  async set(s: WgDeviceSet): Promise<void> {
    this.sets.push(s);
    const bad = (s.peers ?? []).map(opKey).find((k) => this.failKeys.has(k));
    if (bad) throw new WeftError("DATAPLANE_OP_FAILED", `wireguard test: set: refused peer ${bad}`);
  }

  close(): void {}
}

const put = (peer: WgPeerConfig): WgPeerOp => ({ op: "put", peer });
const remove = (publicKey: string): WgPeerOp => ({ op: "remove", publicKey });

describe("WgPeerTable", () => {
  it("sends the puts and removes of one tick as ONE set, in order", async () => {
    const a = cfg(A, 1);
    const b = cfg(B, 2);
    const c = cfg(C, 3);
    const ctl = new RecordingControl({ listenPort: 51820, peers: [status(a), status(b), status(c)] });
    const t = new WgPeerTable(() => ctl);
    await t.list();

    const done = Promise.all([t.put(b), t.remove(c), t.put(a)]);
    expect(ctl.sets).toHaveLength(0); // not sent synchronously: waits for the rest of the tick
    await done;
    expect(ctl.sets).toEqual([{ peers: [put(b), remove(C), put(a)] }]);

    // The next tick is a new batch.
    await t.remove(a);
    expect(ctl.sets).toHaveLength(2);
    expect(ctl.sets[1]).toEqual({ peers: [remove(A)] });
  });

  it("ops issued from later microtasks of the same tick (promise continuations) join the batch", async () => {
    const a = cfg(A, 1);
    const b = cfg(B, 2);
    const ctl = new RecordingControl({ listenPort: 51820, peers: [status(a), status(b)] });
    const t = new WgPeerTable(() => ctl);
    await t.list();
    const p1 = t.put(a);
    await Promise.resolve();
    const p2 = t.put(b);
    await Promise.resolve().then(() => undefined);
    const p3 = t.remove(b);
    await Promise.all([p1, p2, p3]);
    expect(ctl.sets).toEqual([{ peers: [put(a), put(b), remove(B)] }]);
  });

  it("kicks a peer new on the device with keepalive 1, then puts its own keepalive; a known peer is put once", async () => {
    const known = cfg(A, 1);
    const ctl = new RecordingControl({ listenPort: 51820, peers: [status(known)] });
    const t = new WgPeerTable(() => ctl);
    await t.list();

    const fresh = cfg(B, 2, { keepalive: 25 });
    const quiet = cfg(C, 3, { keepalive: 0 });
    await Promise.all([t.put(known), t.put(fresh), t.put(quiet)]);
    expect(ctl.sets).toEqual([{
      peers: [
        put(known),
        put({ ...fresh, keepalive: 1 }), put(fresh),
        put({ ...quiet, keepalive: 1 }), put(quiet),
      ],
    }]);
  });

  it("a peer configured with keepalive 1 is put once even when new", async () => {
    const ctl = new RecordingControl();
    const t = new WgPeerTable(() => ctl);
    await t.list();
    const one = cfg(D, 4, { keepalive: 1 });
    await t.put(one);
    expect(ctl.sets).toEqual([{ peers: [put(one)] }]);
  });

  it("the device as of the last list() decides what is new", async () => {
    const a = cfg(A, 1);
    const ctl = new RecordingControl();
    const t = new WgPeerTable(() => ctl);
    // Before any list(), every peer is new.
    await t.put(a);
    expect(ctl.sets.at(-1)).toEqual({ peers: [put({ ...a, keepalive: 1 }), put(a)] });
    // Once the device shows it, an update is a single put...
    ctl.device = { listenPort: 51820, peers: [status(a)] };
    await t.list();
    const moved = { ...a, endpoint: "198.18.0.99:51820" };
    await t.put(moved);
    expect(ctl.sets.at(-1)).toEqual({ peers: [put(moved)] });
    // ...and when it is gone from the device, it is kicked again.
    ctl.device = { listenPort: 51820, peers: [] };
    await t.list();
    await t.put(a);
    expect(ctl.sets.at(-1)).toEqual({ peers: [put({ ...a, keepalive: 1 }), put(a)] });
  });

  it("when a batch fails, retries each op alone so only the failing peer's promise rejects", async () => {
    const a = cfg(A, 1);
    const b = cfg(B, 2);
    const c = cfg(C, 3);
    const ctl = new RecordingControl({ listenPort: 51820, peers: [status(a), status(b), status(c)] });
    const t = new WgPeerTable(() => ctl);
    await t.list();
    ctl.failKeys.add(B);
    const fresh = cfg(D, 4);

    const results = await Promise.allSettled([t.put(a), t.put(b), t.remove(c), t.put(fresh)]);
    expect(results.map((r) => r.status)).toEqual(["fulfilled", "rejected", "fulfilled", "fulfilled"]);
    const err = (results[1] as PromiseRejectedResult).reason;
    expect(err).toBeInstanceOf(WeftError);
    expect(err).toMatchObject({ code: "DATAPLANE_OP_FAILED", message: expect.stringContaining(B) });

    // The batch, then each call's ops on their own (a new peer's two puts stay together).
    expect(ctl.sets[0]).toEqual({ peers: [put(a), put(b), remove(C), put({ ...fresh, keepalive: 1 }), put(fresh)] });
    expect(ctl.sets.slice(1)).toEqual(expect.arrayContaining([
      { peers: [put(a)] },
      { peers: [put(b)] },
      { peers: [remove(C)] },
      { peers: [put({ ...fresh, keepalive: 1 }), put(fresh)] },
    ]));
    expect(ctl.sets).toHaveLength(5);
  });

  it("a failing batch of one op is not retried", async () => {
    const ctl = new RecordingControl();
    const t = new WgPeerTable(() => ctl);
    await t.list();
    ctl.failKeys.add(A);
    await expect(t.remove(cfg(A, 1))).rejects.toMatchObject({ code: "DATAPLANE_OP_FAILED" });
    expect(ctl.sets).toEqual([{ peers: [remove(A)] }]);
  });

  it("list() gives configs without status fields and keeps the device status in `last`", async () => {
    const a = cfg(A, 1, { presharedKey: PSK });
    const b = cfg(B, 2, { keepalive: 0, allowedIPs: ["10.244.2.0/24", "10.244.20.0/24"] });
    const device: WgDeviceStatus = {
      publicKey: key(9),
      listenPort: 51820,
      peers: [status(a, { lastHandshakeMs: 1_700_000_000_000, rxBytes: 10, txBytes: 20 }), status(b, { rxBytes: 5 })],
    };
    const ctl = new RecordingControl(device);
    const t = new WgPeerTable(() => ctl);
    expect(t.last).toBeUndefined();
    const listed = await t.list();
    expect(listed).toStrictEqual([
      { publicKey: A, endpoint: "198.18.0.1:51820", allowedIPs: ["10.244.1.0/24"], keepalive: 25, presharedKey: PSK },
      { publicKey: B, endpoint: "198.18.0.2:51820", allowedIPs: ["10.244.2.0/24", "10.244.20.0/24"], keepalive: 0 },
    ]);
    expect(t.last).toBe(device);
    // A listed peer has the reconciler's key of the config it came from.
    expect(listed.map((p) => t.key(p))).toEqual([wgPeerKey(a), wgPeerKey(b)]);
    expect(listed.map((p) => t.id(p))).toEqual([A, B]);
    expect(t.kind).toBe("wg_peer");
  });

  it("uses the control the getter returns at the time (a device re-created after a restart)", async () => {
    const first = new RecordingControl();
    const second = new RecordingControl();
    let current = first;
    const t = new WgPeerTable(() => current);
    await t.list();
    current = second;
    await t.list();
    await t.put(cfg(A, 1, { keepalive: 1 }));
    expect([first.gets, second.gets]).toEqual([1, 1]);
    expect(first.sets).toHaveLength(0);
    expect(second.sets).toHaveLength(1);
  });
});
