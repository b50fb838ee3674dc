// KernelWgControl against a scripted socket that plays the kernel's generic
// netlink side: the family lookup, GET_DEVICE dumps split over several
// messages (a peer's allowed IPs continued in the next one, as
// drivers/net/wireguard/netlink.c does), SET_DEVICE ACKs and errnos. Replies
// are built and requests read here by hand, with <linux/wireguard.h>'s
// numbers, not with the code under test.
import { EventEmitter } from "node:events";
import { constants } from "node:os";
import { describe, expect, it } from "vitest";
import { WeftError } from "../../lib/src/errors.js";
import { NetlinkError, type RawSocket } from "../src/dataplane/netlink-channel.js";
import { KernelWgControl } from "../src/wireguard/kernel-control.js";
import type { WgPeerOp } from "../src/wireguard/control.js";
import { nlmsg } from "./helpers/netlink-messages.js";

const FAMILY = 0x1b;
const GENL_ID_CTRL = 0x10;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const NLM_F_MULTI = 0x2;
const NESTED = 0x8000;
const { ENODEV, ENOENT, EPERM } = constants.errno;

// ---- building the kernel's side ----

const errMsg = (seq: number, errno: number) => { const p = Buffer.alloc(20); p.writeInt32LE(-errno); return nlmsg(NLMSG_ERROR, 0, seq, p); };
const genl = (cmd: number, ...attrs: Buffer[]) => Buffer.concat([Buffer.from([cmd, 1, 0, 0]), ...attrs]);
function attr(type: number, data: Buffer): Buffer {
  const h = Buffer.alloc(4);
  h.writeUInt16LE(4 + data.length, 0);
  h.writeUInt16LE(type, 2);
  return Buffer.concat([h, data, Buffer.alloc((4 - (data.length % 4)) % 4)]);
}
const nest = (type: number, ...children: Buffer[]) => attr(type | NESTED, Buffer.concat(children));
const u8 = (v: number) => Buffer.from([v]);
const u16 = (v: number) => { const b = Buffer.alloc(2); b.writeUInt16LE(v); return b; };
const u32 = (v: number) => { const b = Buffer.alloc(4); b.writeUInt32LE(v); return b; };
const u64 = (v: bigint) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(v); return b; };
const str = (s: string) => Buffer.from(`${s}\0`);
const timespec = (s: bigint, ns: bigint) => Buffer.concat([u64(s), u64(ns)]);
function sockaddr4(ip: string, port: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt16LE(2, 0);
  b.writeUInt16BE(port, 2);
  Buffer.from(ip.split(".").map(Number)).copy(b, 4);
  return b;
}
function sockaddr6(groups: number[], port: number): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt16LE(10, 0);
  b.writeUInt16BE(port, 2);
  groups.forEach((g, i) => b.writeUInt16BE(g, 8 + 2 * i));
  return b;
}
// The kernel's order inside an allowed IP: mask, family, address.
const allowed4 = (ip: string, cidr: number) => nest(0, attr(3, u8(cidr)), attr(1, u16(2)), attr(2, Buffer.from(ip.split(".").map(Number))));
const allowed6 = (cidr: number) => nest(0, attr(3, u8(cidr)), attr(1, u16(10)), attr(2, Buffer.from([0xfd, ...Buffer.alloc(15)])));

/** A distinct, non-zero 32-byte key. */
const keyBuf = (n: number) => { const b = Buffer.alloc(32, 0x55); b.writeUInt16BE(n); return b; };
const key = (n: number) => keyBuf(n).toString("base64");

// ---- reading what was sent ----

interface Attr { type: number; nested: boolean; data: Buffer }
function attrs(b: Buffer): Attr[] {
  const out: Attr[] = [];
  for (let off = 0; off + 4 <= b.length;) {
    const len = b.readUInt16LE(off);
    const t = b.readUInt16LE(off + 2);
    out.push({ type: t & 0x3fff, nested: (t & NESTED) !== 0, data: b.subarray(off + 4, off + len) });
    off += (len + 3) & ~3;
  }
  return out;
}
const get = (list: Attr[], type: number) => list.find((a) => a.type === type);
const top = (m: Buffer) => attrs(m.subarray(20));
const peersOf = (m: Buffer) => attrs(get(top(m), 8)?.data ?? Buffer.alloc(0)).map((p) => attrs(p.data));

// ---- the scripted kernel ----

class FakeKernel extends EventEmitter implements RawSocket {
  readonly sent: Buffer[] = [];
  hasWireguard = true;
  /** The GET_DEVICE dump: each entry is one message's genl payload. */
  dump: Buffer[] = [];
  getErrno = 0;
  /** Errno for each SET in turn (0 = ACK); beyond the list, ACK. */
  setErrnos: number[] = [];
  holdSets = false;
  readonly held: Array<() => void> = [];

  send(m: Buffer, _o: { port: number }, cb: (err?: Error) => void): void {
    this.sent.push(Buffer.from(m));
    const replies = this.answer(m);
    queueMicrotask(() => {
      cb();
      for (const r of replies ?? []) this.emit("message", r);
    });
  }

  private answer(m: Buffer): Buffer[] | undefined {
    const seq = m.readUInt32LE(8);
    const type = m.readUInt16LE(4);
    const cmd = m[16];
    if (type === GENL_ID_CTRL && cmd === 3) {
      if (!this.hasWireguard) return [errMsg(seq, ENOENT)];
      return [nlmsg(GENL_ID_CTRL, 0, seq, genl(1, attr(2, str("wireguard")), attr(1, u16(FAMILY)))), errMsg(seq, 0)];
    }
    if (type === FAMILY && cmd === 0) {
      if (this.getErrno) return [errMsg(seq, this.getErrno)];
      return [...this.dump.map((p) => nlmsg(FAMILY, NLM_F_MULTI, seq, p)), nlmsg(NLMSG_DONE, NLM_F_MULTI, seq, u32(0))];
    }
    if (type === FAMILY && cmd === 1) {
      const errno = this.setErrnos.shift() ?? 0;
      if (!this.holdSets) return [errMsg(seq, errno)];
      this.held.push(() => this.emit("message", errMsg(seq, errno)));
      return undefined;
    }
    return [errMsg(seq, EPERM)];
  }

  lookups(): Buffer[] { return this.sent.filter((m) => m.readUInt16LE(4) === GENL_ID_CTRL); }
  gets(): Buffer[] { return this.sent.filter((m) => m.readUInt16LE(4) === FAMILY && m[16] === 0); }
  sets(): Buffer[] { return this.sent.filter((m) => m.readUInt16LE(4) === FAMILY && m[16] === 1); }
  ref() {}
  unref() {}
  close() {}
}

function setup(): { k: FakeKernel; wg: KernelWgControl } {
  const k = new FakeKernel();
  return { k, wg: new KernelWgControl("wg0", { openSocket: () => k }) };
}

const settle = async () => { for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r)); };

const put = (n: number, allowedIPs = [`10.${n >> 8}.${n & 255}.0/24`], endpoint = `198.18.${n >> 8}.${n & 255}:51820`): WgPeerOp =>
  ({ op: "put", peer: { publicKey: key(n), endpoint, allowedIPs, keepalive: 0 } });

describe("KernelWgControl", () => {
  it("looks the wireguard family up once, with CTRL_CMD_GETFAMILY by name", async () => {
    const { k, wg } = setup();
    await Promise.all([wg.get(), wg.set({ listenPort: 51820 })]);
    await wg.get();
    expect(k.lookups().length).toBe(1);
    const m = k.lookups()[0]!;
    expect(m.readUInt16LE(6)).toBe(0x1 | 0x4); // REQUEST | ACK
    expect([m[16], m[17]]).toEqual([3, 1]);
    expect(m.readUInt16LE(20)).toBe(4 + 10);
    expect(m.readUInt16LE(22)).toBe(2);
    expect(m.toString("latin1", 24, 34)).toBe("wireguard\0");
    expect(k.gets().length).toBe(2);
    expect(k.sets().length).toBe(1);
    wg.close();
  });

  it("fails with NOT_SUPPORTED when the kernel has no wireguard family, and asks again next time", async () => {
    const { k, wg } = setup();
    k.hasWireguard = false;
    await expect(wg.get()).rejects.toMatchObject({ code: "NOT_SUPPORTED", message: expect.stringMatching(/wireguard wg0: .*no WireGuard/) });
    await expect(wg.set({ listenPort: 1 })).rejects.toMatchObject({ code: "NOT_SUPPORTED" });
    expect(k.lookups().length).toBe(2);
    k.hasWireguard = true;
    await expect(wg.get()).resolves.toMatchObject({ peers: [] });
    expect(k.lookups().length).toBe(3);
    wg.close();
  });

  it("get dumps the device by name and merges a peer continued across messages", async () => {
    const { k, wg } = setup();
    const peerA = nest(0,
      attr(1, keyBuf(10)), attr(2, keyBuf(11)), attr(6, timespec(1_700_000_000n, 987_654_321n)), attr(5, u16(25)),
      attr(8, u64(5_000_000_000n)), attr(7, u64(42n)), attr(10, u32(1)), attr(4, sockaddr4("198.18.0.2", 51820)),
      nest(9, allowed4("10.244.2.0", 24), allowed6(64), allowed4("10.244.1.0", 24)));
    // B has no endpoint yet and no pre-shared key; its allowed IPs did not fit the first message.
    const peerBHead = nest(0,
      attr(1, keyBuf(20)), attr(2, Buffer.alloc(32)), attr(6, timespec(0n, 0n)), attr(5, u16(0)),
      attr(8, u64(0n)), attr(7, u64(0n)), attr(10, u32(1)), nest(9, allowed4("10.9.0.0", 16)));
    const peerBTail = nest(0, attr(1, keyBuf(20)), nest(9, allowed4("192.168.7.7", 32), allowed4("10.1.0.0", 16)));
    const peerC = nest(0,
      attr(1, keyBuf(30)), attr(2, Buffer.alloc(32)), attr(6, timespec(1n, 0n)), attr(5, u16(0)),
      attr(8, u64(0n)), attr(7, u64(0n)), attr(10, u32(1)), attr(4, sockaddr6([0xfd00, 0, 0, 0, 0, 0, 0, 1], 51821)));
    k.dump = [
      genl(0, attr(6, u16(51820)), attr(7, u32(0)), attr(1, u32(7)), attr(2, str("wg0")), attr(3, keyBuf(1)), attr(4, keyBuf(2)),
        nest(8, peerA, peerBHead)),
      genl(0, nest(8, peerBTail, peerC)),
    ];
    const status = await wg.get();
    expect(status).toStrictEqual({
      publicKey: key(2),
      listenPort: 51820,
      peers: [
        { publicKey: key(10), endpoint: "198.18.0.2:51820", allowedIPs: ["10.244.1.0/24", "10.244.2.0/24"], keepalive: 25,
          presharedKey: key(11), lastHandshakeMs: 1_700_000_000_987, rxBytes: 42, txBytes: 5_000_000_000 },
        { publicKey: key(20), endpoint: "", allowedIPs: ["10.1.0.0/16", "10.9.0.0/16", "192.168.7.7/32"], keepalive: 0,
          lastHandshakeMs: 0, rxBytes: 0, txBytes: 0 },
        { publicKey: key(30), endpoint: "[fd00::1]:51821", allowedIPs: [], keepalive: 0, lastHandshakeMs: 1000, rxBytes: 0, txBytes: 0 },
      ],
    });
    const m = k.gets()[0]!;
    expect(m.readUInt16LE(4)).toBe(FAMILY);
    expect(m.readUInt16LE(6)).toBe(0x1 | 0x300); // REQUEST | DUMP
    expect([m[16], m[17]]).toEqual([0, 1]);
    expect(top(m)).toEqual([{ type: 2, nested: false, data: str("wg0") }]);
    wg.close();
  });

  it("get reports a device without a private key as having no public key", async () => {
    const { k, wg } = setup();
    k.dump = [genl(0, attr(6, u16(0)), attr(7, u32(0)), attr(1, u32(7)), attr(2, str("wg0")))];
    expect(await wg.get()).toStrictEqual({ publicKey: undefined, listenPort: 0, peers: [] });
    wg.close();
  });

  it("set encodes keys, endpoint, flags, allowed IPs, a cleared PSK and removals as the kernel reads them", async () => {
    const { k, wg } = setup();
    await wg.set({
      privateKey: key(1),
      listenPort: 51820,
      peers: [
        { op: "put", peer: { publicKey: key(10), endpoint: "198.18.0.2:51820", allowedIPs: ["10.244.1.0/24", "10.244.2.0/24"], keepalive: 25, presharedKey: key(11) } },
        { op: "put", peer: { publicKey: key(20), endpoint: "", allowedIPs: [], keepalive: 0 } },
        { op: "remove", publicKey: key(30) },
      ],
    });
    expect(k.sets().length).toBe(1);
    const m = k.sets()[0]!;
    // Headers and the first attributes at their offsets.
    expect(m.readUInt32LE(0)).toBe(m.length);
    expect(m.readUInt16LE(4)).toBe(FAMILY);
    expect(m.readUInt16LE(6)).toBe(0x1 | 0x4);
    expect([m[16], m[17]]).toEqual([1, 1]);
    expect([m.readUInt16LE(20), m.readUInt16LE(22), m.toString("latin1", 24, 28)]).toEqual([8, 2, "wg0\0"]);
    expect([m.readUInt16LE(28), m.readUInt16LE(30)]).toEqual([36, 3]);
    expect(m.subarray(32, 64)).toEqual(keyBuf(1));
    expect([m.readUInt16LE(64), m.readUInt16LE(66), m.readUInt16LE(68)]).toEqual([6, 6, 51820]);
    expect([m.readUInt16LE(72), m.readUInt16LE(74)]).toEqual([m.length - 72, 8 | NESTED]);
    expect(m.readUInt16LE(78)).toBe(0 | NESTED);
    expect([m.readUInt16LE(80), m.readUInt16LE(82)]).toEqual([36, 1]);
    expect(m.subarray(84, 116)).toEqual(keyBuf(10));

    expect(get(top(m), 5)).toBeUndefined(); // never WGDEVICE_F_REPLACE_PEERS
    expect(attrs(get(top(m), 8)!.data).map((p) => [p.type, p.nested])).toEqual([[0, true], [0, true], [0, true]]);
    const [a, b, c] = peersOf(m) as [Attr[], Attr[], Attr[]];

    expect(get(a, 1)!.data).toEqual(keyBuf(10));
    expect(get(a, 3)!.data.readUInt32LE()).toBe(2); // REPLACE_ALLOWEDIPS
    expect(get(a, 2)!.data).toEqual(keyBuf(11));
    expect(get(a, 5)!.data).toEqual(u16(25));
    const ep = get(a, 4)!.data;
    expect(ep.length).toBe(16);
    expect([ep.readUInt16LE(0), ep.readUInt16BE(2), [...ep.subarray(4, 8)]]).toEqual([2, 51820, [198, 18, 0, 2]]);
    expect(ep.subarray(8)).toEqual(Buffer.alloc(8));
    const ips = get(a, 9)!;
    expect(ips.nested).toBe(true);
    expect(attrs(ips.data).map((ip) => {
      expect(ip.nested).toBe(true);
      const f = attrs(ip.data);
      return [get(f, 1)!.data.readUInt16LE(), [...get(f, 2)!.data], get(f, 3)!.data.length, get(f, 3)!.data[0]];
    })).toEqual([[2, [10, 244, 1, 0], 1, 24], [2, [10, 244, 2, 0], 1, 24]]);

    expect(get(b, 1)!.data).toEqual(keyBuf(20));
    expect(get(b, 2)!.data).toEqual(Buffer.alloc(32)); // no PSK in the config: cleared
    expect(get(b, 3)!.data.readUInt32LE()).toBe(2);
    expect(get(b, 5)!.data).toEqual(u16(0));
    expect(get(b, 4)).toBeUndefined();
    expect(attrs(get(b, 9)?.data ?? Buffer.alloc(0))).toEqual([]);

    expect(c.map((x) => [x.type, x.data])).toEqual([[1, keyBuf(30)], [3, u32(1)]]); // REMOVE_ME
    wg.close();
  });

  it("splits a big set into messages of at most 64 peers, each sent after the previous ACK, device attributes in the first", async () => {
    const { k, wg } = setup();
    k.holdSets = true;
    const ops = Array.from({ length: 150 }, (_, i) => put(i + 1));
    const done = wg.set({ privateKey: key(1), listenPort: 51820, peers: ops });
    for (let i = 1; i <= 3; i++) {
      await settle();
      expect(k.sets().length).toBe(i);
      k.held.shift()!();
    }
    await done;
    const sets = k.sets();
    expect(sets.map((m) => peersOf(m).length)).toEqual([64, 64, 22]);
    expect(sets.flatMap((m) => peersOf(m).map((p) => get(p, 1)!.data.toString("base64")))).toEqual(ops.map((_, i) => key(i + 1)));
    expect(sets.map((m) => top(m).map((x) => x.type))).toEqual([[2, 3, 6, 8], [2, 8], [2, 8]]);
    expect(sets.every((m) => get(top(m), 2)!.data.equals(str("wg0")))).toBe(true);
    wg.close();
  });

  it("keeps each set message near 32 KiB when peers carry many allowed IPs", async () => {
    const { k, wg } = setup();
    const ops = Array.from({ length: 20 }, (_, i) => put(i + 1, Array.from({ length: 200 }, (_, j) => `10.${i}.${j}.0/24`)));
    await wg.set({ peers: ops });
    const sets = k.sets();
    expect(sets.length).toBeGreaterThan(1);
    expect(sets.every((m) => m.length <= 32 << 10)).toBe(true);
    expect(sets.flatMap((m) => peersOf(m).map((p) => attrs(get(p, 9)!.data).length))).toEqual(ops.map(() => 200));
    expect(sets.flatMap((m) => peersOf(m).map((p) => get(p, 1)!.data.toString("base64")))).toEqual(ops.map((_, i) => key(i + 1)));
    wg.close();
  });

  it("turns an errno into DATAPLANE_OP_FAILED naming the device, and stops at the first refused message", async () => {
    const { k, wg } = setup();
    k.getErrno = ENODEV;
    const err = await wg.get().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WeftError);
    expect(err).toMatchObject({ code: "DATAPLANE_OP_FAILED", message: "wireguard wg0: read the device: the device does not exist (ENODEV)" });
    expect((err as Error).cause).toBeInstanceOf(NetlinkError);
    expect((err as Error).cause).toMatchObject({ errno: ENODEV });

    k.setErrnos = [0, EPERM];
    await expect(wg.set({ peers: Array.from({ length: 150 }, (_, i) => put(i + 1)) }))
      .rejects.toMatchObject({ code: "DATAPLANE_OP_FAILED", message: "wireguard wg0: configure the device: EPERM" });
    expect(k.sets().length).toBe(2);
    wg.close();
  });

  it("looks the family up again after the kernel says it is gone (ENOENT)", async () => {
    const { k, wg } = setup();
    k.setErrnos = [ENOENT];
    await expect(wg.set({ listenPort: 1 })).rejects.toMatchObject({ code: "DATAPLANE_OP_FAILED" });
    await wg.set({ listenPort: 1 });
    expect(k.lookups().length).toBe(2);
    wg.close();
  });

  it("rejects malformed keys, endpoints and CIDRs before sending anything", async () => {
    const { k, wg } = setup();
    await expect(wg.set({ privateKey: "c2VjcmV0" })).rejects.toMatchObject({ code: "INVALID_ARGUMENT", message: "wireguard wg0: private key is not a base64 32-byte key" });
    await expect(wg.set({ peers: [put(1), put(2, undefined, "198.18.0.2")] })).rejects.toMatchObject({ code: "INVALID_ARGUMENT", message: expect.stringMatching(/endpoint "198.18.0.2"/) });
    await expect(wg.set({ peers: [put(1, ["10.0.0.0/33"])] })).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    expect(k.sets().length).toBe(0);
    wg.close();
  });
});
