// NetlinkChannel against a scripted socket that plays the kernel's side:
// ACKs and errno replies, multipart dumps (interrupted, or ending in an
// error), the in-flight bound and request deadlines.
import { EventEmitter } from "node:events";
import { constants } from "node:os";
import { afterEach, describe, expect, it, vi } from "vitest";
import { NetlinkChannel, NetlinkError, type RawSocket } from "../src/dataplane/netlink-channel.js";
import { encodeDump, encodeRoute, NLM_F_ACK, NLM_F_DUMP_INTR, NLM_F_MULTI, NLMSG_DONE, NLMSG_ERROR, RTM, routeLength, splitMessages, writeRoute } from "../src/dataplane/rtnl-codec.js";
import { nlmsg as msg } from "./helpers/netlink-messages.js";

const int = (v: number) => { const b = Buffer.alloc(4); b.writeInt32LE(v); return b; };

class ScriptedSocket extends EventEmitter implements RawSocket {
  readonly sent: Buffer[] = [];
  closed = false;
  /** Answers each request; default: ACK. */
  answer: (req: Buffer, seq: number) => Buffer[] | undefined = (_r, seq) => [msg(NLMSG_ERROR, 0, seq, int(0))];
  send(m: Buffer, _o: { port: number }, cb: (err?: Error) => void): void {
    this.sent.push(Buffer.from(m));
    const seq = m.readUInt32LE(8);
    const replies = this.answer(m, seq);
    queueMicrotask(() => {
      cb();
      for (const r of replies ?? []) this.emit("message", r);
    });
  }
  ref() {}
  unref() {}
  close() { this.closed = true; }
}

const route = encodeRoute(RTM.NEWROUTE, 0, { dst: "10.0.0.0/24", gateway: "10.0.0.1", oif: 2, onlink: true });
const entry = (seq: number, flags = NLM_F_MULTI) => msg(RTM.NEWROUTE, flags, seq, Buffer.alloc(12));

afterEach(() => vi.useRealTimers());

describe("NetlinkChannel", () => {
  it("resolves on ACK and rejects with the kernel's errno as a number", async () => {
    const sock = new ScriptedSocket();
    const ch = new NetlinkChannel({ openSocket: () => sock });
    await expect(ch.request("add route", Buffer.from(route))).resolves.toEqual([]);
    sock.answer = (_r, seq) => [msg(NLMSG_ERROR, 0, seq, int(-constants.errno.EEXIST))];
    const err = await ch.request("add route", Buffer.from(route)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NetlinkError);
    expect(err).toMatchObject({ errno: constants.errno.EEXIST, message: "add route: EEXIST" });
    ch.close();
  });

  it("runs an interrupted dump again and returns the consistent one", async () => {
    const sock = new ScriptedSocket();
    let n = 0;
    sock.answer = (_r, seq) => {
      n++;
      // The first attempt raced with a change: the kernel flags it.
      const flags = n === 1 ? NLM_F_MULTI | NLM_F_DUMP_INTR : NLM_F_MULTI;
      return [Buffer.concat([entry(seq, flags), entry(seq, flags)]), msg(NLMSG_DONE, flags, seq, int(0))];
    };
    const ch = new NetlinkChannel({ openSocket: () => sock });
    const replies = await ch.dump("list routes", encodeDump(RTM.GETROUTE, 2));
    expect(replies.length).toBe(2);
    expect(n).toBe(2);
    ch.close();
  });

  it("hands a scan's replies over as they arrive, and fails the scan when its visitor throws", async () => {
    const sock = new ScriptedSocket();
    sock.answer = (_r, seq) => [Buffer.concat([entry(seq), entry(seq)]), entry(seq), msg(NLMSG_DONE, NLM_F_MULTI, seq, int(0))];
    const ch = new NetlinkChannel({ openSocket: () => sock });
    const seen: number[] = [];
    await ch.scan("list routes", encodeDump(RTM.GETROUTE, 2), (m) => seen.push(m.type), () => seen.push(-1));
    expect(seen).toEqual([RTM.NEWROUTE, RTM.NEWROUTE, RTM.NEWROUTE]);
    let calls = 0;
    const scan = ch.scan("list routes", encodeDump(RTM.GETROUTE, 2), () => { calls++; throw new Error("bad reply"); }, () => undefined);
    await expect(scan).rejects.toThrow("bad reply");
    // The rest of that dump is not parsed, and the channel still answers.
    expect(calls).toBe(1);
    await expect(ch.dump("list routes", encodeDump(RTM.GETROUTE, 2))).resolves.toHaveLength(3);
    ch.close();
  });

  it("gives up on a dump interrupted every time, saying why", async () => {
    const sock = new ScriptedSocket();
    sock.answer = (_r, seq) => [msg(NLMSG_DONE, NLM_F_MULTI | NLM_F_DUMP_INTR, seq, int(0))];
    const ch = new NetlinkChannel({ openSocket: () => sock });
    await expect(ch.dump("list routes", encodeDump(RTM.GETROUTE, 2))).rejects.toThrow(/interrupted the dump 5 times/);
    expect(sock.sent.length).toBe(5);
    ch.close();
  });

  it("fails a dump whose DONE message carries an error: the list is incomplete", async () => {
    const sock = new ScriptedSocket();
    sock.answer = (_r, seq) => [entry(seq), msg(NLMSG_DONE, NLM_F_MULTI, seq, int(-constants.errno.EINTR))];
    const ch = new NetlinkChannel({ openSocket: () => sock });
    await expect(ch.dump("list routes", encodeDump(RTM.GETROUTE, 2))).rejects.toMatchObject({ errno: constants.errno.EINTR, message: expect.stringMatching(/dump ended with an error/) });
    ch.close();
  });

  it("keeps at most 64 requests in flight", async () => {
    const sock = new ScriptedSocket();
    const held: Array<() => void> = [];
    let outstanding = 0;
    let peak = 0;
    sock.answer = (_r, seq) => {
      outstanding++;
      peak = Math.max(peak, outstanding);
      held.push(() => { outstanding--; sock.emit("message", msg(NLMSG_ERROR, 0, seq, int(0))); });
      return undefined;
    };
    const ch = new NetlinkChannel({ openSocket: () => sock });
    const all = Promise.all(Array.from({ length: 200 }, () => ch.request("add", Buffer.from(route))));
    for (let done = 0; done < 200;) {
      await new Promise((r) => setTimeout(r, 0));
      const batch = held.splice(0);
      batch.forEach((f) => f());
      done += batch.length;
    }
    await all;
    expect(peak).toBe(64);
    ch.close();
  });

  it("does not time out answers that wait unread because the event loop was blocked", async () => {
    vi.useFakeTimers();
    const sock = new ScriptedSocket();
    let answer: (() => void) | undefined;
    sock.answer = (_r, seq) => { answer = () => sock.emit("message", msg(NLMSG_ERROR, 0, seq, int(0))); return undefined; };
    const ch = new NetlinkChannel({ openSocket: () => sock });
    const p = ch.request("add route", Buffer.from(route));
    await vi.advanceTimersByTimeAsync(0);
    // The loop was stuck for 6 s (say, behind the kernel's RTNL lock): the first sweep after it is late.
    vi.setSystemTime(Date.now() + 6000);
    await vi.advanceTimersByTimeAsync(500);
    answer!();
    await expect(p).resolves.toEqual([]);
    expect(sock.closed).toBe(false);
    ch.close();
  });

  it("fails requests the kernel never answers, drops the socket and opens a new one", async () => {
    vi.useFakeTimers();
    const stuck = new ScriptedSocket();
    stuck.answer = () => undefined;
    const opened: ScriptedSocket[] = [];
    const ch = new NetlinkChannel({ openSocket: () => { const s = opened.length ? new ScriptedSocket() : stuck; opened.push(s); return s; } });
    const p = ch.request("add route", Buffer.from(route)).catch((e: Error) => e);
    await vi.advanceTimersByTimeAsync(6000);
    expect(await p).toMatchObject({ code: "DATAPLANE_OP_FAILED", message: expect.stringMatching(/no answer from the kernel within 5000 ms/) });
    await vi.advanceTimersByTimeAsync(0);
    expect(stuck.closed).toBe(true);
    await expect(ch.request("add route", Buffer.from(route))).resolves.toEqual([]);
    expect(opened.length).toBe(2);
    ch.close();
    await expect(ch.request("add route", Buffer.from(route))).rejects.toThrow(/dataplane closed/);
  });

  it("batches requests into few datagrams, asks only the last of each for an ACK, and maps error replies to their items", async () => {
    const sock = new ScriptedSocket();
    // The kernel's way: every message is handled in order; a failure is answered whatever the flags,
    // a success only when it asked for an ACK.
    sock.answer = (req) => {
      const out: Buffer[] = [];
      splitMessages(req, (m) => {
        const failed = m.buf[m.start + 18]! % 7 === 3; // RTA_DST 10.x.<i>.0 with i % 7 == 3
        if (failed) out.push(msg(NLMSG_ERROR, 0, m.seq, int(-constants.errno.ENETUNREACH)));
        else if (m.flags & NLM_F_ACK) out.push(msg(NLMSG_ERROR, 0, m.seq, int(0)));
      });
      return out;
    };
    const ch = new NetlinkChannel({ openSocket: () => sock });
    const routes = Array.from({ length: 2500 }, (_, i) => ({ dst: `10.${i >> 8}.${i & 255}.0/24`, gateway: `10.${i >> 8}.${i & 255}.0`, oif: 2, onlink: true }));
    const errs = await ch.batch(routes, routeLength, (b, off, r) => writeRoute(b, off, RTM.NEWROUTE, 0, r), (r) => `add route ${r.dst}`);
    // 2,500 messages of 60 bytes in datagrams of at most 64 KiB; only the last message of each asks for an ACK.
    expect(sock.sent.length).toBe(3);
    for (const d of sock.sent) {
      const flags: number[] = [];
      splitMessages(d, (m) => flags.push(m.flags & NLM_F_ACK));
      expect(flags.filter(Boolean).length).toBe(1);
      expect(flags.at(-1)).toBe(NLM_F_ACK);
    }
    const failed = errs.flatMap((e, i) => (e ? [i] : []));
    expect(failed).toEqual(routes.flatMap((_, i) => ((i & 255) % 7 === 3 ? [i] : [])));
    expect(errs[3]).toMatchObject({ errno: constants.errno.ENETUNREACH, message: "add route 10.0.3.0/24: ENETUNREACH" });
    ch.close();
  });
});
