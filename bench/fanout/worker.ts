// A watcher process: opens its share of the watchers (each on its own
// connection, or --streams-per-connection of them on one), records when each
// change reached each watcher, and reports to the coordinator over IPC.
// Forked by the coordinator (run.ts); not run by hand.
import net from "node:net";
import * as grpc from "@grpc/grpc-js";
import { LeaseServiceClient, WatchLeasesResponse_Kind, LeaseEvent_Type, type NodeStatus, type WatchLeasesResponse } from "../../gen/weft/v1/lease.js";
import { now } from "./proc.js";
import type { Arrival, FromWorker, ToWorker } from "./protocol.js";

/** eventMessages: messages after the snapshot that carried at least one new event (one per change unless the server batched). */
interface WatchCounters { reconnects: number; streamErrors: number; eventMessages: number; statusReports: number; statusErrors: number }
type Recorder = (rev: number, type: string, key: string, t: number) => void;
/** Where an open is, for the reason of a failed one. */
interface Stage { phase: string }
type Opener = (addr: string, i: number, record: Recorder, counters: WatchCounters, deadline: number, stage: Stage) => Promise<() => void>;

async function runWorker(): Promise<void> {
  const send = (m: FromWorker) => process.send!(m);
  const arrivals = new Map<number, Arrival>();
  const counters: WatchCounters = { reconnects: 0, streamErrors: 0, eventMessages: 0, statusReports: 0, statusErrors: 0 };
  let servers = 1;
  // --isolated: the coordinator sends the next change once every watcher has this one.
  let notifyAt = Infinity;
  const recorderFor = (server: number): Recorder => (rev, type, key, t) => {
    let a = arrivals.get(rev);
    if (!a) arrivals.set(rev, (a = { rev, type, key, times: [], byServer: new Array<number>(servers).fill(0) }));
    a.times.push(t);
    a.byServer[server]!++;
    if (a.times.length === notifyAt) send({ ev: "complete", rev, type, key });
  };
  const closers: (() => void)[] = [];
  process.on("message", async (m: ToWorker) => {
    try {
      if (m.cmd === "start") {
        servers = m.addrs.length;
        const pool = new ClientPool(m.streamsPerConnection, servers);
        const open = m.target === "weft" ? weftOpener(pool, m.reportStatus) : openEtcdWatcher;
        spreadSourceAddresses(m.srcAddrs);
        const openedByServer = new Array<number>(servers).fill(0);
        const started = now();
        let next = 0;
        let failed = 0;
        const failReasons: Record<string, number> = {};
        const deadline = started + m.setupTimeoutS * 1000;
        const lane = async () => {
          while (next < m.count && now() < deadline) {
            const i = m.offset + next++;
            const server = i % servers;
            // One open may not hang the lane past the setup deadline.
            let timer: NodeJS.Timeout | undefined;
            const stage: Stage = { phase: "open" };
            const opening = open(m.addrs[server]!, i, recorderFor(server), counters, deadline, stage);
            try {
              closers.push(await Promise.race([opening, new Promise<never>((_, rej) => {
                timer = setTimeout(() => rej(new Error("open timeout")), Math.max(1, Math.min(60_000, deadline - now())));
              })]));
              openedByServer[server]!++;
            } catch (err) {
              failed++;
              const why = `${String((err as Error)?.message ?? err)} (in ${stage.phase})`.replace(/\d+/g, "N").slice(0, 160);
              failReasons[why] = (failReasons[why] ?? 0) + 1;
              opening.then((close) => close(), () => undefined); // close it if it opens late
            } finally {
              clearTimeout(timer);
            }
          }
        };
        await Promise.all(Array.from({ length: Math.min(m.concurrency, m.count) }, lane));
        if (m.notifyComplete) notifyAt = closers.length;
        const connections = m.target === "weft" ? pool.size : closers.length;
        send({ ev: "ready", opened: closers.length, connections, failed: failed + (m.count - next), setupMs: now() - started, openedByServer, failReasons });
      } else if (m.cmd === "report") {
        const mem = process.memoryUsage();
        send({ ev: "report", arrivals: [...arrivals.values()], ...counters, rss: mem.rss, heapUsed: mem.heapUsed });
      } else if (m.cmd === "exit") {
        for (const c of closers) c();
        setTimeout(() => process.exit(0), 200).unref();
      }
    } catch (err) {
      send({ ev: "fatal", message: String((err as Error)?.stack ?? err) });
    }
  });
  process.on("disconnect", () => process.exit(0));
}

/**
 * Above ~28,000 connections from one source address to one server port the
 * ephemeral ports run out (net.ipv4.ip_local_port_range): spread this
 * process's connections over loopback source addresses. grpc-js opens its
 * TCP connections with net.connect({host, port}); this adds localAddress.
 */
function spreadSourceAddresses(srcAddrs: string[]): void {
  if (srcAddrs.length === 0) return;
  const connect = net.connect;
  let k = 0;
  (net as { connect: unknown }).connect = (...args: unknown[]) => {
    const o = args[0];
    if (o && typeof o === "object" && !(o as net.TcpNetConnectOpts).localAddress && (o as net.TcpNetConnectOpts).port !== undefined) {
      args[0] = { ...o, localAddress: srcAddrs[k++ % srcAddrs.length] };
    }
    return (connect as (...a: unknown[]) => net.Socket)(...args);
  };
}

/** A shared gRPC client and the handle one watcher holds on it. */
interface ClientRef { client: LeaseServiceClient; release(): void }

/**
 * The gRPC clients of this process. Each has its own HTTP/2 connection (a local subchannel pool; grpc-js
 * would otherwise share one per address) and carries the streams of up to perConnection watchers:
 * 1 is an agent's own connection; more measures the server's per-stream cost with fewer sockets.
 * A client closes when its last watcher closes.
 */
class ClientPool {
  readonly #clients = new Map<string, { client: LeaseServiceClient; refs: number }>();
  constructor(readonly perConnection: number, readonly servers: number) {}

  /** Clients with a watcher, i.e. connections. */
  get size(): number {
    return this.#clients.size;
  }

  take(addr: string, i: number): ClientRef {
    // Watcher i watches server i % servers: group it among that server's watchers (i / servers).
    const key = `${addr} ${Math.floor(Math.floor(i / this.servers) / this.perConnection)}`;
    let c = this.#clients.get(key);
    if (!c) {
      c = { client: new LeaseServiceClient(addr, grpc.credentials.createInsecure(), { "grpc.use_local_subchannel_pool": 1 }), refs: 0 };
      this.#clients.set(key, c);
    }
    const held = c;
    held.refs++;
    let released = false;
    return {
      client: held.client,
      release: () => {
        if (released) return;
        released = true;
        if (--held.refs > 0) return;
        held.client.close();
        if (this.#clients.get(key) === held) this.#clients.delete(key);
      },
    };
  }
}

/** Opens WatchLeases streams (and, with reportStatus, ReportStatus streams as agents do) on the pool's clients. */
function weftOpener(pool: ClientPool, reportStatus: boolean): Opener {
  return (addr, i, record, counters, deadline, stage) => openWeft(pool.take(addr, i), i, record, counters, deadline, stage, reportStatus);
}

/** Every open status stream of this process, for the heartbeat. */
const reporters = new Set<{ heartbeat(t: number): void }>();
const HEARTBEAT_MS = 10_000;
setInterval(() => {
  const t = now();
  for (const r of reporters) r.heartbeat(t);
}, 1000).unref();

/**
 * The ReportStatus stream of watcher i, on the watcher's connection: a
 * NodeStatus when it starts, after every event message (applied_revision =
 * the newest revision received), and at least every 10 s.
 */
function openStatusStream(client: LeaseServiceClient, i: number, counters: WatchCounters, snapshotRev: number): { applied(rev: number): void; close(): void } {
  let applied = snapshotRev;
  let lastSent = 0;
  let ended = false;
  const status = (): NodeStatus => ({
    nodeName: `bench-agent-${i}`, appliedRevision: applied, healthy: true, problems: [], backend: "vxlan", version: "bench", peers: 0, subnet: "",
  });
  const call = client.reportStatus((err) => {
    ended = true;
    reporters.delete(r);
    if (err && err.code !== grpc.status.CANCELLED) counters.statusErrors++;
  });
  const sendNow = (t: number) => {
    if (ended) return;
    lastSent = t;
    counters.statusReports++;
    call.write(status());
  };
  const r = { heartbeat: (t: number) => { if (t - lastSent >= HEARTBEAT_MS) sendNow(t); } };
  reporters.add(r);
  sendNow(now());
  return {
    applied(rev) {
      if (rev <= applied) return;
      applied = rev;
      sendNow(now());
    },
    close() {
      reporters.delete(r);
      ended = true;
      call.cancel();
    },
  };
}

/** One watcher: a WatchLeases stream on its client that resumes on its own; resolves at SNAPSHOT_COMPLETE. */
function openWeft(ref: ClientRef, i: number, record: Recorder, counters: WatchCounters, deadline: number, stage: Stage, reportStatus: boolean): Promise<() => void> {
  stage.phase = "stream until snapshot complete";
  const { client } = ref;
  let status: ReturnType<typeof openStatusStream> | undefined;
  let lastRev = 0;
  let closed = false;
  let attempts = 0;
  let call: grpc.ClientReadableStream<WatchLeasesResponse> | undefined;
  return new Promise((resolveOpen, rejectOpen) => {
    let ready = false;
    const start = () => {
      call = client.watchLeases({ fromRevision: lastRev, storeId: "" });
      call.on("data", (msg: WatchLeasesResponse) => {
        const t = now();
        switch (msg.kind) {
          case WatchLeasesResponse_Kind.KIND_EVENTS: {
            let fresh = 0;
            for (const e of msg.events) {
              if (e.revision <= lastRev) continue;
              lastRev = e.revision;
              fresh++;
              record(e.revision, LeaseEvent_Type[e.type] ?? String(e.type), e.lease?.subnet ?? "", t);
            }
            if (ready && fresh > 0) counters.eventMessages++;
            if (fresh > 0) status?.applied(lastRev);
            break;
          }
          case WatchLeasesResponse_Kind.KIND_SNAPSHOT_COMPLETE:
          case WatchLeasesResponse_Kind.KIND_PROGRESS:
            lastRev = Math.max(lastRev, msg.revision);
            if (!ready) {
              ready = true;
              if (reportStatus) status = openStatusStream(client, i, counters, lastRev);
              resolveOpen(close);
            }
            break;
        }
      });
      call.on("error", (err: grpc.ServiceError) => {
        if (closed || err.code === grpc.status.CANCELLED) return;
        counters.streamErrors++;
        // As an agent does: resume from the last revision applied (bounded).
        if (++attempts > 5 || now() > deadline + 600_000) {
          if (!ready) rejectOpen(err);
          return;
        }
        counters.reconnects++;
        setTimeout(() => !closed && start(), 100 * attempts);
      });
    };
    const close = () => {
      closed = true;
      status?.close();
      call?.cancel();
      ref.release();
    };
    start();
    setTimeout(() => {
      if (!ready) {
        close();
        rejectOpen(new Error("snapshot timeout"));
      }
    }, Math.max(1, deadline - now())).unref();
  });
}

/**
 * etcd: its own Etcd3 client on its own connection, a range read of the prefix, then a watch from the
 * next revision. etcd3 makes one gRPC client per service (KV, Watch); they share one channel here, so
 * the watcher has one connection as a Go clientv3 client (flanneld) has, not two.
 */
async function openEtcdWatcher(addr: string, _i: number, record: Recorder, counters: WatchCounters, _deadline: number, stage: Stage): Promise<() => void> {
  const { Etcd3 } = await import("etcd3");
  const channel = new grpc.Channel(addr.replace(/^https?:\/\//, ""), grpc.credentials.createInsecure(), { "grpc.use_local_subchannel_pool": 1 });
  const grpcOptions = { "grpc.use_local_subchannel_pool": 1, channelOverride: channel } as Record<string, unknown>;
  const client = new Etcd3({ hosts: addr, dialTimeout: 30_000, grpcOptions: grpcOptions as never });
  stage.phase = "connect and range read";
  const res = await client.getAll().prefix("/weft/leases/").exec();
  const from = Number(res.header.revision) + 1;
  // What WatchBuilder.create() does, with the watch stream's disconnects noted while it waits.
  stage.phase = "watch create";
  const watcher = client.watch().prefix("/weft/leases/").startRevision(String(from)).watcher();
  const onDisconnect = (err: Error) => (stage.phase = `watch create, after a disconnect: ${err?.message ?? err}`);
  watcher.on("disconnected", onDisconnect);
  try {
    await new Promise<void>((resolve, reject) => {
      watcher.once("connected", () => resolve());
      watcher.once("error", reject);
    });
  } finally {
    watcher.off("disconnected", onDisconnect);
  }
  let lastRev = from - 1;
  watcher.on("data", (r) => {
    const t = now();
    let fresh = 0;
    for (const e of r.events) {
      const rev = Number(e.kv.mod_revision);
      if (rev <= lastRev) continue;
      lastRev = rev;
      fresh++;
      record(rev, e.type === "Delete" || (e.type as unknown) === "DELETE" ? "DELETE" : "PUT", e.kv.key.toString(), t);
    }
    if (fresh > 0) counters.eventMessages++;
  });
  watcher.on("error", () => counters.streamErrors++);
  watcher.on("disconnected", () => counters.reconnects++);
  return () => {
    void watcher.cancel().catch(() => undefined);
    client.close();
  };
}

void runWorker();
