// A bounded raw-frame fuzz run of the gRPC port of the real binary: random,
// truncated, oversized and mis-prefixed frames, odd headers and abandoned
// streams on every method, while a normal client keeps acquiring, renewing
// and watching. The server must stay up, answer every call with a status (none
// UNKNOWN: that is a handler that threw), keep its memory bounded, and keep
// serving the normal client. The seed is printed; WEFT_FUZZ_SEED=<n> replays it.
import { join } from "node:path";
import type http2 from "node:http2";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AcquireLeaseRequest, GetNetworkConfigRequest, ReleaseLeaseRequest, RenewLeaseRequest, WatchLeasesRequest } from "../../gen/weft/v1/lease.js";
import { tempDir } from "./helpers.js";
import { connect, startServer, vxlanReq, watch, writeNetConf, type ServerProcess } from "./server-process.js";
import { frame, rawSession, rssBytes, type RawResult } from "./raw-grpc.js";

const BUDGET_MS = 15_000;
const MAX_CASES = 20_000;
const IN_FLIGHT = 48;

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
function rng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => int(256)));
  return { next, int, bytes, pick: <T>(xs: readonly T[]): T => xs[int(xs.length)]! };
}
type Rng = ReturnType<typeof rng>;

const S = "/weft.v1.LeaseService/";
const METHODS: Record<string, (r: Rng) => Buffer> = {
  [`${S}GetNetworkConfig`]: () => Buffer.from(GetNetworkConfigRequest.encode({}).finish()),
  [`${S}AcquireLease`]: (r) => Buffer.from(AcquireLeaseRequest.encode(AcquireLeaseRequest.fromPartial(vxlanReq(1000 + r.int(200)))).finish()),
  [`${S}RenewLease`]: (r) => Buffer.from(RenewLeaseRequest.encode(RenewLeaseRequest.fromPartial({ nodeName: `node-${1000 + r.int(200)}`, subnet: `10.244.${r.int(256)}.0/24` })).finish()),
  [`${S}ReleaseLease`]: (r) => Buffer.from(ReleaseLeaseRequest.encode(ReleaseLeaseRequest.fromPartial({ nodeName: `node-${1000 + r.int(200)}`, subnet: `10.244.${r.int(256)}.0/24` })).finish()),
  [`${S}WatchLeases`]: (r) => Buffer.from(WatchLeasesRequest.encode({ fromRevision: r.int(50), storeId: "" }).finish()),
  "/weft.v1.NodeIdentityService/IssueCertificate": (r) => r.bytes(r.int(300)),
  "/grpc.health.v1.Health/Check": () => Buffer.alloc(0),
  "/weft.v1.NoSuchService/Nothing": (r) => r.bytes(r.int(50)),
};

/** A normal call that hangs is a failure to report, not a test timeout. */
function inTime<T>(p: Promise<T>, ms = 10_000): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([p, new Promise<T>((_, reject) => { t = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms); })]).finally(() => clearTimeout(t));
}

interface Case { kind: string; path: string; headers: http2.OutgoingHttpHeaders; data: Buffer; end: boolean; abandonAfterMs?: number }

/** One malformed (or sometimes valid) call. */
function makeCase(r: Rng): Case {
  const path = r.pick(Object.keys(METHODS));
  const valid = METHODS[path]!(r);
  const headers: http2.OutgoingHttpHeaders = { ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers" };
  const kinds = ["valid", "random-body", "truncated", "prefix-too-long", "prefix-too-short", "huge-prefix", "oversized", "compressed-flag", "many-frames", "half-sent", "flipped-bits", "bad-headers"] as const;
  const kind = r.pick(kinds);
  const c = (data: Buffer, end = true): Case => ({ kind, path, headers, data, end });
  switch (kind) {
    case "valid": return c(frame(valid));
    case "random-body": return c(frame(r.bytes(r.int(2000))));
    case "truncated": { const f = frame(valid.length ? valid : r.bytes(20)); return c(f.subarray(0, r.int(f.length))); }
    case "prefix-too-long": return c(frame(valid, valid.length + 1 + r.int(10_000)));
    case "prefix-too-short": return c(frame(valid, r.int(Math.max(1, valid.length))));
    case "huge-prefix": return c(frame(r.bytes(r.int(100)), 16_385 + r.int(0xffff_0000)), r.next() < 0.5);
    case "oversized": return c(frame(r.bytes(16_385 + r.int(100_000))));
    case "compressed-flag": { const f = frame(valid); f[0] = 1 + r.int(255); return c(f); }
    case "many-frames": return c(Buffer.concat(Array.from({ length: 2 + r.int(20) }, () => frame(r.next() < 0.5 ? valid : r.bytes(r.int(100))))));
    case "half-sent": return { ...c(frame(valid, valid.length + 5).subarray(0, r.int(valid.length + 5)), false), abandonAfterMs: r.int(300) };
    case "flipped-bits": { const f = frame(valid); for (let i = 0; i < 1 + r.int(4); i++) if (f.length) f[r.int(f.length)]! ^= 1 << r.int(8); return c(f); }
    case "bad-headers": {
      const h = { ...headers };
      const which = r.int(4);
      if (which === 0) h["content-type"] = r.pick(["text/plain", "application/json", "application/grpc+json", ""]);
      if (which === 1) h["grpc-timeout"] = r.pick(["1n", "99999999H", "abc", "-5S", "0m"]);
      if (which === 2) h["grpc-encoding"] = r.pick(["gzip", "deflate", "br", "x-nope"]);
      if (which === 3) h[":method"] = r.pick(["GET", "PUT"]);
      return { ...c(frame(r.next() < 0.5 ? valid : r.bytes(r.int(200)))), headers: h };
    }
  }
}

function run(session: http2.ClientHttp2Session, k: Case): Promise<RawResult & { kind: string }> {
  return new Promise((resolve) => {
    let code: number | undefined;
    let details = "";
    let stream: http2.ClientHttp2Stream;
    try {
      stream = session.request(k.headers);
    } catch {
      return resolve({ kind: k.kind, details: "session closed" });
    }
    const take = (h: http2.IncomingHttpHeaders) => {
      if (h["grpc-status"] !== undefined) code = Number(h["grpc-status"]);
      if (h["grpc-message"] !== undefined) details = String(h["grpc-message"]);
    };
    stream.on("response", take);
    stream.on("trailers", take);
    stream.on("error", () => {});
    stream.on("data", () => {});
    // Watches that were accepted stay open: the fuzzer closes them. A stream
    // that does not close even then is destroyed and reported, not waited for.
    const stop = setTimeout(() => stream.close(), k.abandonAfterMs ?? 2000);
    const stuck = setTimeout(() => {
      stream.destroy();
      resolve({ kind: k.kind, details: "stream never closed", rstCode: -1 });
    }, 10_000);
    stream.on("close", () => {
      clearTimeout(stop);
      clearTimeout(stuck);
      resolve({ kind: k.kind, code, details, rstCode: stream.rstCode });
    });
    if (k.data.length) stream.write(k.data);
    if (k.end) stream.end();
  });
}

describe("raw-frame fuzz of the gRPC port (real process)", () => {
  let dir: ReturnType<typeof tempDir>;
  let server: ServerProcess | undefined;
  beforeAll(() => {
    dir = tempDir("weft-grpcfuzz-");
  });
  afterAll(async () => {
    await server?.stop("SIGKILL");
    dir.cleanup();
  });

  it("stays up, answers every call with a known status, keeps memory bounded and serves a normal client meanwhile", async () => {
    const seed = Number(process.env.WEFT_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
    const why = `(seed ${seed}; replay with WEFT_FUZZ_SEED=${seed})`;
    const r = rng(seed);
    process.stderr.write(`grpc raw-frame fuzz: seed ${seed}\n`);
    server = await startServer(["--insecure", "--store", `sqlite:${join(dir.path, "l.db")}`, "--network-config", writeNetConf(dir.path), "--lease-ttl", "1h"]);
    const s = server;
    const pid = s.proc.pid!;
    const before = await rssBytes(pid);
    let peak = before;

    // The normal client: acquires, renews and watches all along.
    const { client, call } = connect(s.grpcAddr);
    const mine = await call("acquireLease", vxlanReq(1));
    const w = watch(client, 0);
    const normalErrors: string[] = [];
    let normalCalls = 0;
    let stopNormal = false;
    const normal = (async () => {
      for (let i = 0; !stopNormal && i < 1000; i++) {
        try {
          await inTime(call("renewLease", { nodeName: "node-1", subnet: mine.subnet }));
          await inTime(call("acquireLease", vxlanReq(2 + (i % 5))));
          normalCalls += 2;
        } catch (err) {
          normalErrors.push(`${(err as grpc.ServiceError).code} ${(err as grpc.ServiceError).details ?? (err as Error).message}`);
        }
        await new Promise((res) => setTimeout(res, 100));
      }
    })();

    const sessions: http2.ClientHttp2Session[] = [];
    for (let i = 0; i < 4; i++) sessions.push(await rawSession(s.grpcAddr));
    const tally = new Map<string, number>();
    const unknown: string[] = [];
    let tried = 0;
    const t0 = Date.now();
    const worker = async (w: number) => {
      while (Date.now() - t0 < BUDGET_MS && tried < MAX_CASES) {
        tried++;
        let x = sessions[w % sessions.length]!;
        if (x.closed || x.destroyed) x = sessions[w % sessions.length] = await rawSession(s.grpcAddr);
        const k = makeCase(r);
        const res = await run(x, k);
        const key = res.code !== undefined ? grpc.status[res.code] ?? String(res.code) : `rst ${res.rstCode ?? "?"}`;
        tally.set(key, (tally.get(key) ?? 0) + 1);
        // A stream the client abandoned mid-request (half-sent) and node's client
        // did not close is the client's business; a whole request must get an answer.
        if (res.code === grpc.status.UNKNOWN || (res.rstCode === -1 && k.end)) unknown.push(`${k.kind} ${k.path}: ${res.details}`);
        if (tried % 500 === 0) peak = Math.max(peak, await rssBytes(pid));
      }
    };
    try {
      await Promise.all(Array.from({ length: IN_FLIGHT }, (_, i) => worker(i)));
      peak = Math.max(peak, await rssBytes(pid));
      stopNormal = true;
      await inTime(normal, 15_000);

      expect(s.proc.exitCode, `server exited ${why}`).toBeNull();
      expect(unknown, `calls answered UNKNOWN or never closed ${why}`).toEqual([]);
      expect(s.output(), `handler errors in the server log ${why}`).not.toMatch(/unexpected error in gRPC handler/);
      expect(normalErrors, `the normal client was refused ${why}`).toEqual([]);
      expect(normalCalls).toBeGreaterThan(20);
      expect(w.error(), `the normal watch failed ${why}`).toBeUndefined();
      expect((await inTime(call("renewLease", { nodeName: "node-1", subnet: mine.subnet }))).subnet).toBe(mine.subnet);
      expect(peak - before, `RSS grew by ${Math.round((peak - before) / 2 ** 20)} MB ${why}`).toBeLessThan(150 << 20);
      const mb = (n: number) => Math.round(n / 2 ** 20);
      process.stdout.write(`grpc raw-frame fuzz: seed ${seed}, ${tried} calls in ${Date.now() - t0} ms, RSS ${mb(before)} -> peak ${mb(peak)} MB, ${normalCalls} normal calls ok; statuses ${JSON.stringify(Object.fromEntries([...tally].sort()))}\n`);
    } finally {
      stopNormal = true;
      for (const x of sessions) x.destroy();
      w.stream.cancel();
      client.close();
    }
  }, 90_000);
});
