// Watch streams whose clients never read, against the real binary: each
// stream's queue is bounded in bytes, so such a stream is dropped (and its
// HTTP/2 stream reset) instead of growing the server with every change, while
// a client that reads keeps getting everything.
import { join } from "node:path";
import type http2 from "node:http2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WatchLeasesRequest } from "../../gen/weft/v1/lease.js";
import { tempDir, waitFor } from "./helpers.js";
import { connect, startServer, vxlanReq, watch, writeNetConf, type ServerProcess } from "./server-process.js";
import { frame, rawCall, rawSession, rssBytes } from "./raw-grpc.js";

async function metric(s: ServerProcess, name: string): Promise<number> {
  const text = await (await fetch(`${s.httpUrl}/metrics`)).text();
  const m = new RegExp(`^${name} (\\S+)$`, "m").exec(text);
  return m ? Number(m[1]) : NaN;
}

describe("watch streams that never read (real process)", () => {
  let dir: ReturnType<typeof tempDir>;
  let server: ServerProcess | undefined;
  beforeAll(() => {
    dir = tempDir("weft-stalled-");
  });
  afterAll(async () => {
    await server?.stop("SIGKILL");
    dir.cleanup();
  });

  it("drops and resets 200 non-reading streams once each is 1 MiB behind; memory stays bounded; a reader gets every change", async () => {
    server = await startServer(["--insecure", "--store", `sqlite:${join(dir.path, "l.db")}`, "--network-config", writeNetConf(dir.path), "--lease-ttl", "1h"]);
    const s = server;
    const pid = s.proc.pid!;
    const { client, call } = connect(s.grpcAddr);
    for (let i = 1; i <= 20; i++) await call("acquireLease", vxlanReq(i));
    const reader = watch(client, 0);
    const body = Buffer.from(WatchLeasesRequest.encode({ fromRevision: 0, storeId: "" }).finish());
    const sessions: http2.ClientHttp2Session[] = [];
    try {
      // One connection each, as agents have; nobody reads these streams.
      const stalled = [];
      for (let i = 0; i < 200; i++) {
        const x = await rawSession(s.grpcAddr);
        sessions.push(x);
        const c = rawCall(x, "/weft.v1.LeaseService/WatchLeases", frame(body));
        c.stream.pause();
        c.stream.removeAllListeners("data");
        stalled.push(c);
      }
      await waitFor(async () => (await metric(s, "weft_lease_server_watch_streams")) === 201, "201 watch streams");
      const before = await rssBytes(pid);
      let peak = before;
      // Changes, 20 at a time, until every stalled stream is dropped (bounded: 30,000 changes).
      let changes = 0;
      for (let round = 0; round < 1500; round++) {
        await Promise.all(Array.from({ length: 20 }, (_, i) => call("acquireLease", { ...vxlanReq(i + 1), publicIp: `198.18.${2 + (round % 200)}.${i + 1}` })));
        changes += 20;
        if (round % 25 === 0) {
          peak = Math.max(peak, await rssBytes(pid));
          if ((await metric(s, "weft_lease_server_watch_streams_dropped_total")) === 200) break;
        }
      }
      await waitFor(async () => (await metric(s, "weft_lease_server_watch_streams_dropped_total")) === 200, "all 200 stalled streams dropped", 20_000);
      expect(await metric(s, "weft_lease_server_watch_streams")).toBe(1);
      // Their status cannot get past the full window: the streams are reset.
      const ended = await Promise.all(stalled.map((c) => Promise.race([c.result, new Promise((r) => setTimeout(() => r("open"), 15_000))])));
      expect(ended.filter((e) => e === "open")).toHaveLength(0);
      const revision = await metric(s, "weft_lease_server_revision");
      await waitFor(() => reader.messages.some((m) => m.revision === revision), "the reader to get the last change");
      expect(reader.error()).toBeUndefined();
      const mb = (n: number) => Math.round(n / 2 ** 20);
      process.stdout.write(`stalled watchers: RSS ${mb(before)} MB with 200 open, peak ${mb(peak)} MB; all dropped after ${changes} changes; ${mb(await rssBytes(pid))} MB after\n`);
      expect(peak - before).toBeLessThan(150 << 20);
    } finally {
      for (const x of sessions) x.destroy();
      reader.stream.cancel();
      client.close();
    }
  }, 180_000);
});
