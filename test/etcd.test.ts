import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { Etcd3 } from "etcd3";
import { afterAll, describe, expect, it } from "vitest";
import { etcdAvailable, startEtcd, startEtcdCluster, type EtcdCluster, type EtcdProcess } from "./etcd.js";

/** Alive and not a zombie (an orphan whose reaper is slow still has a /proc entry). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

async function eventually(check: () => boolean, ms = 3_000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

async function eventuallyAsync(check: () => Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

/** Retries `fn` (fresh deadline per try) while a new leader is elected. */
async function retry<T>(fn: () => PromiseLike<T>, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

describe.skipIf(!etcdAvailable())("test/etcd.ts: real etcd on loopback", () => {
  const cleanup: Array<EtcdProcess | EtcdCluster> = [];
  afterAll(() => Promise.all(cleanup.map((c) => c.stop())));

  it("one member: put/get through etcd3; stop() kills it and removes its data dir", async () => {
    const etcd = await startEtcd({ name: "single" });
    cleanup.push(etcd);
    expect(etcd.endpoints).toHaveLength(1);
    expect(etcd.endpoints[0]).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(etcd.dataDir.startsWith(join(tmpdir(), "weft-etcd-"))).toBe(true);
    expect(existsSync(etcd.dataDir)).toBe(true);
    const pid = etcd.pid;
    expect(alive(pid)).toBe(true);

    const client = new Etcd3({ hosts: etcd.endpoints });
    try {
      await client.put("weft/test").value("hello");
      expect(await client.get("weft/test").string()).toBe("hello");
    } finally {
      client.close();
    }

    await etcd.stop();
    expect(alive(pid)).toBe(false);
    expect(etcd.running).toBe(false);
    expect(existsSync(etcd.dataDir)).toBe(false);
    await etcd.stop(); // idempotent
    await expect(etcd.restart()).rejects.toThrow(/stopped/);
  });

  it("3 members: survives kill -9 of one; the restarted member rejoins and serves the data", async () => {
    const cluster = await startEtcdCluster(3);
    cleanup.push(cluster);
    expect(cluster.members).toHaveLength(3);
    expect(new Set(cluster.endpoints).size).toBe(3);

    const all = new Etcd3({ hosts: cluster.endpoints });
    try {
      await all.put("weft/a").value("1");
    } finally {
      all.close();
    }

    // Kill the leader: the hard case (the others must elect a new one).
    const victim = await cluster.leader();
    expect(victim).toBeDefined();
    if (!victim) return;
    const rest = cluster.members.filter((m) => m !== victim);
    const pid = victim.pid;
    await victim.kill("SIGKILL");
    expect(alive(pid)).toBe(false);
    expect(victim.running).toBe(false);
    expect(existsSync(victim.dataDir)).toBe(true);
    // Until the survivors notice, a write forwarded to the dead leader waits
    // for etcd's request timeout (~6 s); so wait for the new leader first.
    expect(await eventuallyAsync(async () => (await cluster.leader()) !== undefined, 5_000)).toBe(true);
    expect(rest).toContain(await cluster.leader());

    const survivors = new Etcd3({ hosts: rest.flatMap((m) => m.endpoints) });
    try {
      await retry(() => survivors.put("weft/b").value("2"));
      expect(await retry(() => survivors.get("weft/a").string())).toBe("1");
      expect(await retry(() => survivors.get("weft/b").string())).toBe("2");
    } finally {
      survivors.close();
    }

    await victim.restart();
    expect(victim.running).toBe(true);
    expect(victim.pid).not.toBe(pid);
    const res = await fetch(`${victim.endpoints[0]}/health`);
    expect(JSON.parse(await res.text())).toMatchObject({ health: "true" });

    // The write made while it was down reaches it (linearizable read through it alone).
    const viaVictim = new Etcd3({ hosts: victim.endpoints });
    try {
      expect(await retry(() => viaVictim.get("weft/b").string())).toBe("2");
    } finally {
      viaVictim.close();
    }

    const pids = cluster.members.map((m) => m.pid);
    await cluster.stop();
    await cluster.stop(); // idempotent
    for (const p of pids) expect(alive(p)).toBe(false);
    for (const m of cluster.members) expect(existsSync(m.dataDir)).toBe(false);
  });

  it("a test process that exits (or is SIGKILLed) without stop() leaves no etcd behind", async () => {
    const dir = await mkdtemp(join(tmpdir(), "weft-etcd-exit-test-"));
    try {
      const helper = pathToFileURL(resolve(import.meta.dirname, "etcd.ts")).href;
      for (const how of ["exit", "sigkill"] as const) {
        const script = join(dir, `${how}.mts`);
        await writeFile(
          script,
          `import { startEtcd } from ${JSON.stringify(helper)};
const e = await startEtcd({ name: "orphan" });
process.stdout.write(JSON.stringify({ pid: e.pid, dataDir: e.dataDir }) + "\\n", () => {
  ${how === "exit" ? "process.exit(0)" : 'process.kill(process.pid, "SIGKILL")'};
});
`,
        );
        const { stdout } = await promisify(execFile)(process.execPath, ["--import", "tsx", script], {
          cwd: resolve(import.meta.dirname, ".."),
          timeout: 20_000,
        }).catch((err: { stdout?: string; stderr?: string; signal?: string }) => {
          if (how === "sigkill" && err.signal === "SIGKILL") return { stdout: err.stdout ?? "" };
          throw new Error(`${how} script failed: ${err.stderr}`);
        });
        const { pid, dataDir } = JSON.parse(stdout) as { pid: number; dataDir: string };
        expect(await eventually(() => !alive(pid)), `etcd ${pid} still alive after the parent's ${how}`).toBe(true);
        // The exit handler removes the data dir; after a SIGKILL nothing can.
        if (how === "exit") expect(existsSync(dataDir)).toBe(false);
        else await rm(resolve(dataDir, ".."), { recursive: true, force: true });
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
