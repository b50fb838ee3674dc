// LeaseClient against in-process gRPC servers on 127.0.0.1: error messages name
// the server that failed, a cleanly ended or silent watch stream counts as an
// outage (connectivity 0, next server), and the client fails over.
import { Server, ServerCredentials, status, type ServerWritableStream, type UntypedServiceImplementation } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { LeaseServiceService, WatchLeasesResponse_Kind } from "../../gen/weft/v1/lease.js";
import { LeaseClient } from "../src/lease-client.js";

type WatchImpl = (call: ServerWritableStream<{ fromRevision: number }, unknown>) => void;

const servers: Server[] = [];
const clients: LeaseClient[] = [];

async function startServer(watch: WatchImpl): Promise<string> {
  const s = new Server();
  const unimpl = (_c: unknown, cb: (e: { code: number; details: string }) => void) => cb({ code: status.UNIMPLEMENTED, details: "not here" });
  const impl: UntypedServiceImplementation = {
    getNetworkConfig: unimpl, acquireLease: unimpl, renewLease: unimpl, releaseLease: unimpl,
    listLeases: unimpl, watchLeases: watch,
  };
  const svc = Object.fromEntries(Object.entries(LeaseServiceService).filter(([k]) => k in impl));
  s.addService(svc as typeof LeaseServiceService, Object.fromEntries(Object.keys(svc).map((k) => [k, impl[k]])));
  const port = await new Promise<number>((resolve, reject) => s.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  servers.push(s);
  return `127.0.0.1:${port}`;
}

/** A port nobody listens on. */
async function deadAddress(): Promise<string> {
  const addr = await startServer(() => {});
  servers.pop()!.forceShutdown();
  return addr;
}

function client(addrs: string[], extra: { watchIdleTimeoutMs?: number } = {}) {
  const seen: boolean[] = [];
  const c = new LeaseClient({ servers: addrs, callTimeoutMs: 1000, onConnectivity: (up) => seen.push(up), ...extra });
  clients.push(c);
  return { c, seen };
}

async function drain(c: LeaseClient, from = 0): Promise<{ msgs: unknown[]; err: unknown }> {
  const msgs: unknown[] = [];
  try {
    for await (const m of c.watch(from, new AbortController().signal)) msgs.push(m);
  } catch (err) {
    return { msgs, err };
  }
  return { msgs, err: undefined };
}

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  for (const s of servers.splice(0)) s.forceShutdown();
});

describe("LeaseClient", () => {
  it("names the server that failed, then moves on to the next", async () => {
    const dead = await deadAddress();
    const live = await startServer(() => {});
    const { c, seen } = client([dead, live]);
    const err = await c.getNetworkConfig().catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "SERVER_UNAVAILABLE" });
    expect((err as Error).message).toContain(`lease server ${dead}`);
    expect((err as Error).message).not.toContain(live);
    expect(c.server).toBe(live);
    expect(seen).toEqual([false]);
  });

  it("treats a watch stream the server ended cleanly as an outage: connectivity 0 and failover", async () => {
    const ending = await startServer((call) => {
      call.write({ kind: WatchLeasesResponse_Kind.KIND_PROGRESS, leases: [], events: [], revision: 4, resync: false });
      call.end();
    });
    const other = await startServer(() => {});
    const { c, seen } = client([ending, other]);
    const { msgs, err } = await drain(c);
    expect(msgs).toEqual([{ kind: "progress", revision: 4, storeId: expect.any(String) }]);
    expect(err).toMatchObject({ code: "SERVER_UNAVAILABLE" });
    expect((err as Error).message).toContain(ending);
    expect(seen).toEqual([true, false]);
    expect(c.server).toBe(other);
  });

  it("cancels a watch that stays silent past the idle timeout and fails over", async () => {
    const silent = await startServer(() => { /* never writes, never ends: a dead connection */ });
    const other = await startServer(() => {});
    const { c, seen } = client([silent, other], { watchIdleTimeoutMs: 300 });
    const t0 = Date.now();
    const { err } = await drain(c);
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(err).toMatchObject({ code: "SERVER_UNAVAILABLE" });
    expect((err as Error).message).toMatch(/no message for 300 ms/);
    expect(seen).toEqual([false]);
    expect(c.server).toBe(other);
  });

  it("keeps a watch alive while messages (PROGRESS too) keep coming", async () => {
    let n = 0;
    const ticking = await startServer((call) => {
      const t = setInterval(() => {
        call.write({ kind: WatchLeasesResponse_Kind.KIND_PROGRESS, leases: [], events: [], revision: ++n, resync: false });
        if (n === 6) { clearInterval(t); call.end(); }
      }, 100);
      call.on("cancelled", () => clearInterval(t));
    });
    const { c } = client([ticking], { watchIdleTimeoutMs: 300 });
    const { msgs, err } = await drain(c);
    expect(msgs.length).toBe(6);
    expect((err as Error).message).toMatch(/watch stream ended/);
  });

  it("maps OUT_OF_RANGE to REVISION_COMPACTED", async () => {
    const compacted = await startServer((call) => call.emit("error", { code: status.OUT_OF_RANGE, details: "revision 3 compacted" }));
    const { c } = client([compacted]);
    const { err } = await drain(c, 3);
    expect(err).toMatchObject({ code: "REVISION_COMPACTED" });
  });
});
