// Protective limits of the gRPC port, probed with a raw HTTP/2 client the way
// an attacker would: half-sent and oversized messages, truncated frames, too
// many streams, calls and connections from one address.
import { join } from "node:path";
import type http2 from "node:http2";
import * as grpc from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { AcquireLeaseRequest, WatchLeasesRequest } from "../../gen/weft/v1/lease.js";
import { loadServerConfig } from "../src/config.js";
import { startLeaseServer, type RunningServer } from "../src/server.js";
import { MAX_REQUEST_BYTES, MAX_STREAMS_PER_CONNECTION, clientKey, type GrpcLimits } from "../src/grpc-limits.js";
import { memoryLogger, tempDir, waitFor } from "./helpers.js";
import { connect, startServer, vxlanReq, writeNetConf, type ServerProcess } from "./server-process.js";
import { frame, rawCall, rawSession, rssBytes, type RawResult } from "./raw-grpc.js";

const ACQUIRE = "/weft.v1.LeaseService/AcquireLease";
const WATCH = "/weft.v1.LeaseService/WatchLeases";
const acquireBody = (n: number) => Buffer.from(AcquireLeaseRequest.encode(AcquireLeaseRequest.fromPartial(vxlanReq(n))).finish());
const watchBody = Buffer.from(WatchLeasesRequest.encode({ fromRevision: 0, storeId: "" }).finish());

/** Status codes (or "rst N") -> how many; one line when a test fails. */
function tally(results: readonly RawResult[]): Record<string, number> {
  const t: Record<string, number> = {};
  for (const r of results) {
    const k = r.code ?? `rst ${r.rstCode}`;
    t[k] = (t[k] ?? 0) + 1;
  }
  return t;
}

async function limitRejections(s: RunningServer, limit: string): Promise<number> {
  const m = await s.metrics.limitRejections.get();
  return m.values.find((v) => v.labels.limit === limit)?.value ?? 0;
}

describe("gRPC limits (in-process server, raw HTTP/2 client)", () => {
  let dir: ReturnType<typeof tempDir>;
  let netconf: string;
  const servers: RunningServer[] = [];
  const sessions: http2.ClientHttp2Session[] = [];
  const start = async (limits: Partial<GrpcLimits> = {}) => {
    const cfg = loadServerConfig(["--insecure", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--store", `sqlite:${join(dir.path, `${servers.length}.db`)}`, "--network-config", netconf])!;
    const s = await startLeaseServer(cfg, { log: memoryLogger().log, limits });
    servers.push(s);
    return { s, addr: `127.0.0.1:${s.grpcPort}` };
  };
  const session = async (addr: string) => {
    const x = await rawSession(addr);
    sessions.push(x);
    return x;
  };
  beforeAll(() => {
    dir = tempDir("weft-limits-");
    netconf = writeNetConf(dir.path);
  });
  afterEach(async () => {
    for (const x of sessions.splice(0)) x.destroy();
    await Promise.all(servers.splice(0).map((s) => s.close()));
  });
  afterAll(() => dir.cleanup());

  it("answers a well-formed raw call (the harness itself works)", async () => {
    const { addr } = await start();
    const r = await rawCall(await session(addr), ACQUIRE, frame(acquireBody(1))).result;
    expect(r.code).toBe(grpc.status.OK);
  });

  it("answers a truncated frame with INTERNAL naming the truncation, and an empty request with UNIMPLEMENTED", async () => {
    const { addr } = await start();
    const x = await session(addr);
    const whole = frame(acquireBody(2));
    const cut = await rawCall(x, ACQUIRE, whole.subarray(0, whole.length - 3)).result;
    expect(cut.code).toBe(grpc.status.INTERNAL);
    expect(cut.details).toMatch(/^request truncated: the stream ended after \d+ of the \d+ bytes its length prefix declares; send whole length-prefixed messages$/);
    const inPrefix = await rawCall(x, ACQUIRE, whole.subarray(0, 3)).result;
    expect(inPrefix.code).toBe(grpc.status.INTERNAL);
    expect(inPrefix.details).toMatch(/ended inside a message's 5-byte length prefix/);
    const empty = await rawCall(x, ACQUIRE, Buffer.alloc(0)).result;
    expect(empty.code).toBe(grpc.status.UNIMPLEMENTED);
    expect(empty.details).toMatch(/takes exactly one request message and got none/);
    const watchCut = await rawCall(x, WATCH, frame(watchBody, watchBody.length + 10)).result;
    expect(watchCut.code).toBe(grpc.status.INTERNAL);
  });

  it("refuses a message whose length prefix is above the limit before buffering it, and counts it", async () => {
    const { s, addr } = await start();
    const r = await rawCall(await session(addr), ACQUIRE, frame(Buffer.alloc(100), 4 << 20), false).result;
    expect(r.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(r.details).toMatch(/larger than max \(4194304 vs 16384\)/);
    expect(await limitRejections(s, "request_size")).toBe(1);
    // Just under the limit still works: the limit is the documented one.
    const body = Buffer.concat([acquireBody(3)]);
    expect(body.length).toBeLessThan(MAX_REQUEST_BYTES);
  });

  it("ends a call whose request does not complete in time, and counts it", async () => {
    const { s, addr } = await start({ requestTimeoutMs: 300 });
    const x = await session(addr);
    const t0 = Date.now();
    const half = await rawCall(x, ACQUIRE, frame(Buffer.alloc(10), 1000), false).result;
    expect(half.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(half.details).toMatch(/request message not complete within 300 ms/);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    // A whole message without the end of the request stream is not complete either.
    const noEnd = await rawCall(x, ACQUIRE, frame(acquireBody(4)), false).result;
    expect(noEnd.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(await limitRejections(s, "request_timeout")).toBe(2);
    // A watch's timer stops once its request is complete: the stream stays open.
    const w = rawCall(x, WATCH, frame(watchBody));
    await new Promise((r) => setTimeout(r, 600));
    expect(w.stream.closed).toBe(false);
  });

  it("limits watch streams per client address, and frees the slot when one closes", async () => {
    const { s, addr } = await start({ maxWatchesPerClient: 3 });
    const x = await session(addr);
    const open = Array.from({ length: 3 }, () => rawCall(x, WATCH, frame(watchBody)));
    await waitFor(() => s.hub.streams === 3, "3 watch streams");
    const fourth = await rawCall(x, WATCH, frame(watchBody)).result;
    expect(fourth.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(fourth.details).toMatch(/already has 3 streams open \(--max-watches-per-client\)/);
    expect(await limitRejections(s, "watches_per_client")).toBe(1);
    open[0]!.stream.close();
    await waitFor(() => s.hub.streams === 2, "a stream to close");
    rawCall(x, WATCH, frame(watchBody));
    await waitFor(() => s.hub.streams === 3, "the freed slot to be usable");
    // Unary calls are not watches.
    expect((await rawCall(x, ACQUIRE, frame(acquireBody(5))).result).code).toBe(grpc.status.OK);
  });

  it("limits unary calls in flight per client address", async () => {
    const { s, addr } = await start({ maxRpcsPerClient: 2 });
    const x = await session(addr);
    const pending = [rawCall(x, ACQUIRE, frame(acquireBody(6)), false), rawCall(x, ACQUIRE, frame(acquireBody(7)), false)];
    await new Promise((r) => setTimeout(r, 100));
    const third = await rawCall(x, ACQUIRE, frame(acquireBody(8))).result;
    expect(third.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(third.details).toMatch(/already has 2 calls in flight \(--max-rpcs-per-client\)/);
    expect(await limitRejections(s, "rpcs_per_client")).toBe(1);
    for (const p of pending) p.stream.end();
    expect((await Promise.all(pending.map((p) => p.result))).map((r) => r.code)).toEqual([grpc.status.OK, grpc.status.OK]);
    expect((await rawCall(x, ACQUIRE, frame(acquireBody(9))).result).code).toBe(grpc.status.OK);
  });

  it("limits connections per client address; a real client still gets through when a slot frees", async () => {
    const { s, addr } = await start({ maxConnectionsPerClient: 2 });
    const a = await session(addr);
    await session(addr);
    const third = await rawSession(addr).then((x) => {
      sessions.push(x);
      return new Promise<string>((resolve) => {
        x.once("close", () => resolve("closed"));
        x.once("goaway", () => resolve("closed"));
        x.request({ ":path": ACQUIRE, ":method": "POST" }).on("error", () => {});
      });
    }, () => "refused");
    expect(third).toMatch(/closed|refused/);
    expect(await limitRejections(s, "connections_per_client")).toBeGreaterThanOrEqual(1);
    a.destroy();
    await new Promise((r) => setTimeout(r, 100));
    const { client, call } = connect(addr);
    expect((await call("acquireLease", vxlanReq(10))).subnet).toMatch(/^10\.244\./);
    client.close();
  });

  it("bounds streams per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)", async () => {
    const { addr } = await start();
    const x = await session(addr);
    // nghttp2 assumes 100 until SETTINGS arrive, so the limit is not 100 on purpose.
    await waitFor(() => x.remoteSettings.maxConcurrentStreams === MAX_STREAMS_PER_CONNECTION, "the server's SETTINGS");
  });

  it("counts IPv6 clients by /64 and IPv4-mapped addresses as IPv4", () => {
    expect(clientKey("2001:db8:1:2:aaaa::1")).toBe("2001:db8:1:2::/64");
    expect(clientKey("2001:db8:1:2:bbbb:cccc:dddd:eeee")).toBe("2001:db8:1:2::/64");
    expect(clientKey("2001:db8::1")).toBe("2001:db8:0:0::/64");
    expect(clientKey("::ffff:198.18.0.7")).toBe("198.18.0.7");
    expect(clientKey("198.18.0.7")).toBe("198.18.0.7");
    expect(clientKey(undefined)).toBe("unknown");
  });
});

// The attack from issue 9, against the real binary: 250 streams each declare a
// 4 MB request and send all but its last bytes. It took the server from 105 MB
// to 1.13 GB RSS with no answer. Now each is refused at its length prefix, and
// half-sent requests under the limit are ended by the request timeout.
describe("half-sent messages (real process)", () => {
  let dir: ReturnType<typeof tempDir>;
  let server: ServerProcess | undefined;
  beforeAll(() => {
    dir = tempDir("weft-halfsent-");
  });
  afterAll(async () => {
    await server?.stop("SIGKILL");
    dir.cleanup();
  });

  it("keeps memory bounded and answers every stream; other clients are served meanwhile", async () => {
    server = await startServer(["--insecure", "--store", `sqlite:${join(dir.path, "l.db")}`, "--network-config", writeNetConf(dir.path)]);
    const pid = server.proc.pid!;
    const before = await rssBytes(pid);
    const { client, call } = connect(server.grpcAddr);
    await call("acquireLease", vxlanReq(1));
    const open: http2.ClientHttp2Session[] = [];
    try {
      // Three connections: 128 streams each at most (the server's SETTINGS).
      for (let i = 0; i < 3; i++) open.push(await rawSession(server.grpcAddr));
      const big = Buffer.alloc((4 << 20) - 1);
      const huge = Array.from({ length: 250 }, (_, i) => rawCall(open[i % 3]!, ACQUIRE, frame(big, 4 << 20), false));
      const hugeResults = await Promise.all(huge.map((h) => h.result));
      expect(tally(hugeResults)).toEqual({ [grpc.status.RESOURCE_EXHAUSTED]: 250 });
      const afterHuge = await rssBytes(pid);

      // Under the limit: each buffers at most 16 KiB until the 10 s timeout.
      const partial = Buffer.alloc(MAX_REQUEST_BYTES - 1);
      const t0 = Date.now();
      const slow = Array.from({ length: 250 }, (_, i) => rawCall(open[i % 3]!, ACQUIRE, frame(partial, MAX_REQUEST_BYTES), false));
      await new Promise((r) => setTimeout(r, 1000));
      expect((await call("acquireLease", vxlanReq(2))).subnet).toMatch(/^10\.244\./);
      const during = await rssBytes(pid);
      const slowResults = await Promise.all(slow.map((h) => h.result));
      const took = Date.now() - t0;
      expect(tally(slowResults)).toEqual({ [grpc.status.DEADLINE_EXCEEDED]: 250 });
      const mb = (n: number) => Math.round(n / 2 ** 20);
      process.stdout.write(`half-sent: RSS ${mb(before)} MB before, ${mb(afterHuge)} MB after 250 x 4 MB declared, ${mb(during)} MB with 250 x 16 KiB half-sent; those ended after ${took} ms\n`);
      expect(afterHuge - before).toBeLessThan(100 << 20);
      expect(during - before).toBeLessThan(100 << 20);
      expect(took).toBeLessThan(20_000);
    } finally {
      for (const x of open) x.destroy();
      client.close();
    }
  }, 60_000);
});
