// etcd: one etcd 3.4 process (/usr/bin/etcd, temp data dir, 127.0.0.1), used
// two ways: as the target itself (watchers are etcd3 clients watching a prefix,
// as Flannel's agents do; changes are puts and deletes), and as the store that
// weft lease servers share (weft-target.ts).
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Etcd3 } from "etcd3";
import type { Opts } from "./options.js";
import { children, drainLines, freePort, sleep, stopChild, tempDirs } from "./proc.js";
import { vtepMac, type Target } from "./target.js";

export interface EtcdProcess {
  child: ChildProcess;
  pid: number;
  /** Client URL, http://127.0.0.1:PORT. */
  url: string;
  /** A client of its own, for changes and checks. */
  ctl: Etcd3;
  metricsRss(): Promise<number | undefined>;
  stop(): Promise<void>;
}

/** Starts etcd and waits (up to 20 s) until it answers a read. */
export async function startEtcdProcess(o: Pick<Opts, "verbose">): Promise<EtcdProcess> {
  const dir = mkdtempSync(join(tmpdir(), "weft-bench-etcd-"));
  tempDirs.add(dir);
  const [cport, pport] = [await freePort(), await freePort()];
  const client = `http://127.0.0.1:${cport}`;
  const peer = `http://127.0.0.1:${pport}`;
  const child = spawn("/usr/bin/etcd", ["--name", "bench", "--data-dir", join(dir, "data"),
    "--listen-client-urls", client, "--advertise-client-urls", client,
    "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", `bench=${peer}`,
    "--log-level", "warn", "--logger", "zap"], { stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  const tail = drainLines(child, () => undefined, o.verbose);
  const { Etcd3 } = await import("etcd3");
  const ctl = new Etcd3({ hosts: client, grpcOptions: { "grpc.use_local_subchannel_pool": 1 } });
  const until = Date.now() + 20_000;
  for (;;) {
    try {
      await ctl.get("/weft/ping").string();
      break;
    } catch (err) {
      if (child.exitCode !== null || Date.now() > until) throw new Error(`etcd did not come up: ${(err as Error).message}\n${tail.join("\n")}`);
      await sleep(200);
    }
  }
  return {
    child,
    pid: child.pid!,
    url: client,
    ctl,
    async metricsRss() {
      try {
        const text = await (await fetch(`${client}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
        const m = /^process_resident_memory_bytes\s+([0-9.e+]+)/m.exec(text);
        return m ? Number(m[1]) : undefined;
      } catch {
        return undefined;
      }
    },
    async stop() {
      ctl.close();
      await stopChild(child);
    },
  };
}

/** etcd alone as the target: watchers watch /weft/leases/ directly (Flannel's way). */
export async function startEtcd(o: Opts): Promise<Target> {
  const etcd = await startEtcdProcess(o);
  const { ctl } = etcd;
  const value = (name: string, i: number) => JSON.stringify({
    nodeName: name, publicIP: `192.0.${(i >> 8) & 255}.${i & 255}`, backendType: "vxlan", vxlan: { vni: 1, vtepMac: vtepMac(i) },
    expiresAt: new Date(Date.now() + 86_400_000).toISOString(),
  });
  const keyOf = (k: number) => `/weft/leases/10.${(k >> 8) & 255}.${k & 255}.0-24`;
  return {
    pid: etcd.pid,
    addr: etcd.url,
    addrs: [etcd.url],
    procs: [{ name: "etcd", pid: etcd.pid, watchIndex: 0 }],
    metricsRss: () => etcd.metricsRss(),
    async seed(n) {
      for (let i = 0; i < n; i++) await ctl.put(keyOf(40_000 + i)).value(value(`seed-${i}`, 100_000 + i)).exec();
    },
    async change(i) {
      const k = Math.floor(i / 3);
      const key = keyOf(k);
      if (i % 3 === 2) {
        const r = await ctl.delete().key(key).exec();
        return { rev: Number(r.header.revision), type: "DELETE", key };
      }
      const r = await ctl.put(key).value(value(`bench-change-${k}`, k)).exec();
      return { rev: Number(r.header.revision), type: "PUT", key };
    },
    stop: () => etcd.stop(),
  };
}
