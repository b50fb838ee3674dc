// weft as the target: the real bin/weft-lease-server as its own process(es) on
// 127.0.0.1. With --store sqlite (default), one server on a temporary SQLite
// file. With --store etcd, one etcd (etcd-target.ts) and --servers N lease
// servers on it with one --etcd-prefix: the first with --network-config (it
// stores the config in etcd), the others without (they read it from etcd).
// Watchers are spread over all servers; changes go through the first.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { LeaseServiceClient, type Lease as PbLease } from "../../gen/weft/v1/lease.js";
import type { Opts } from "./options.js";
import { startEtcdProcess, type EtcdProcess } from "./etcd-target.js";
import { ROOT, children, drainLines, stopChild, tempDirs } from "./proc.js";
import { vtepMac, type ServerProc, type Target } from "./target.js";

export const ETCD_PREFIX = "/weft/network";

function unary<Req, Res>(fn: (req: Req, md: grpc.Metadata, opts: Partial<grpc.CallOptions>, cb: (e: grpc.ServiceError | null, r: Res) => void) => unknown, req: Req): Promise<Res> {
  return new Promise((res, rej) => fn(req, new grpc.Metadata(), { deadline: Date.now() + 30_000 }, (e, r) => (e ? rej(e) : res(r))));
}

/** Every watcher is one client address here; these flags lift the per-address limits (max 50,000 watchers). */
export const LIFT_CLIENT_LIMITS = ["--max-connections-per-client", "1000000", "--max-watches-per-client", "1000000"];

interface LeaseServerProcess { child: ChildProcess; ports: { grpc: string; http: string } }

/** Spawns one lease server and waits (up to 20 s) for its "lease server listening" log line. */
async function spawnLeaseServer(o: Opts, storeArgs: string[]): Promise<LeaseServerProcess> {
  const bin = join(ROOT, "bin", "weft-lease-server");
  const child = spawn(process.execPath, [...o.serverNodeArgs, bin, "--insecure", ...storeArgs,
    "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--lease-ttl", "24h",
    // Every watcher connects from 127.0.0.1: lift the per-client limits made for real clusters.
    ...LIFT_CLIENT_LIMITS],
  { stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  // The server logs its ports in a JSON "lease server listening" line.
  const ports = await new Promise<{ grpc: string; http: string }>((res, rej) => {
    const t = setTimeout(() => rej(new Error(`lease server did not log "lease server listening" within 20 s:\n${tail.join("\n")}`)), 20_000);
    const tail = drainLines(child, (line) => {
      if (!line.includes("lease server listening")) return;
      try {
        const j = JSON.parse(line) as { grpc: string; http: string };
        clearTimeout(t);
        res(j);
      } catch { /* not JSON */ }
    }, o.verbose);
    child.once("exit", (code, sig) => {
      clearTimeout(t);
      rej(new Error(`lease server exited (${code ?? sig}) before listening:\n${tail.join("\n")}`));
    });
  });
  return { child, ports };
}

export async function startWeft(o: Opts): Promise<Target> {
  const dir = mkdtempSync(join(tmpdir(), "weft-bench-fanout-"));
  tempDirs.add(dir);
  const netConf = join(dir, "net-conf.json");
  // /8 with /24 subnets: 65,536 subnets, enough for any --leases.
  writeFileSync(netConf, JSON.stringify({ Network: "10.0.0.0/8", SubnetLen: 24, Backend: { Type: "vxlan" } }));
  let etcd: EtcdProcess | undefined;
  const servers: LeaseServerProcess[] = [];
  if (o.store === "sqlite") {
    servers.push(await spawnLeaseServer(o, ["--store", `sqlite:${join(dir, "leases.db")}`, "--network-config", netConf]));
  } else {
    etcd = await startEtcdProcess(o);
    const store = ["--store", `etcd:${etcd.url}`, "--etcd-prefix", ETCD_PREFIX];
    servers.push(await spawnLeaseServer(o, [...store, "--network-config", netConf]));
    servers.push(...await Promise.all(Array.from({ length: o.servers - 1 }, () => spawnLeaseServer(o, store))));
  }
  const first = servers[0]!;
  const addr = first.ports.grpc;
  const procs: ServerProc[] = servers.map((s, i) => ({ name: `weft-${i + 1}`, pid: s.child.pid!, watchIndex: i }));
  if (etcd) procs.push({ name: "etcd", pid: etcd.pid });
  const ctl = new LeaseServiceClient(addr, grpc.credentials.createInsecure(), { "grpc.use_local_subchannel_pool": 1 });
  const held = new Map<number, PbLease>();
  const acquire = (name: string, i: number) =>
    unary<Parameters<typeof ctl.acquireLease>[0], PbLease>(ctl.acquireLease.bind(ctl) as never, {
      nodeName: name, publicIp: `192.0.${(i >> 8) & 255}.${i & 255}`, vxlan: { vni: 1, vtepMac: vtepMac(i) }, wireguard: undefined, hostGw: undefined, previousSubnet: "", instanceId: "",
    });
  return {
    pid: first.child.pid!,
    addr,
    addrs: servers.map((s) => s.ports.grpc),
    procs,
    async metricsText() {
      try {
        return await (await fetch(`http://${first.ports.http}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
      } catch {
        return undefined;
      }
    },
    async metricsRss() {
      try {
        const text = await (await fetch(`http://${first.ports.http}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
        const m = /^weft_lease_server_process_resident_memory_bytes(?:\{[^}]*\})?\s+([0-9.e+]+)/m.exec(text);
        return m ? Number(m[1]) : undefined;
      } catch {
        return undefined;
      }
    },
    async seed(n) {
      for (let i = 0; i < n; i++) await acquire(`seed-${i}`, 100_000 + i);
    },
    async change(i) {
      const k = Math.floor(i / 3);
      const name = `bench-change-${k}`;
      switch (i % 3) {
        case 0: {
          const l = await acquire(name, k);
          held.set(k, l);
          return { rev: l.revision, type: "TYPE_ADDED", key: l.subnet };
        }
        case 1: {
          const l = await unary<{ nodeName: string; subnet: string }, PbLease>(ctl.renewLease.bind(ctl) as never, { nodeName: name, subnet: held.get(k)!.subnet });
          return { rev: l.revision, type: "TYPE_CHANGED", key: l.subnet };
        }
        default: {
          const subnet = held.get(k)!.subnet;
          held.delete(k);
          await unary(ctl.releaseLease.bind(ctl) as never, { nodeName: name, subnet });
          return { type: "TYPE_REMOVED", key: subnet };
        }
      }
    },
    async stop() {
      ctl.close();
      await Promise.all(servers.map((s) => stopChild(s.child)));
      await etcd?.stop();
    },
  };
}
