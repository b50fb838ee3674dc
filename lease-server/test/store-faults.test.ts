// The store's file and disk going wrong under the real binary: files that are
// empty, not SQLite, corrupt or on a read-only disk are refused with a clear
// error; a disk that fills up (a tiny tmpfs) or etcd going away makes the
// server not ready, with a log line, until writes succeed again, and no lease
// is lost or half-written. tmpfs mounts live in a private mount namespace that
// only the server process sees, so nothing leaks into the host.
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import * as grpc from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { SqliteLeaseStore } from "../src/store/sqlite-lease-store.js";
import { connect, runBin, startServer, vxlanReq, writeNetConf, type ServerProcess, type Wrap } from "./server-process.js";
import { tempDir, waitFor } from "./helpers.js";
import { requireOrSkip, requireTools } from "../../test/tools.js";
import { etcdAvailable, startEtcd, type EtcdProcess } from "../../test/etcd.js";

const noStack = (s: string) => expect(s).not.toMatch(/\n\s+at /);

async function readyz(s: ServerProcess): Promise<{ code: number; body: { status: string; reason?: string } }> {
  const r = await fetch(`${s.httpUrl}/readyz`);
  return { code: r.status, body: await r.json() as { status: string; reason?: string } };
}

/** grpc.health.v1.Health/Check for the whole server ("" service), by hand: two tiny messages. */
const HealthClient = grpc.makeGenericClientConstructor({
  check: {
    path: "/grpc.health.v1.Health/Check", requestStream: false, responseStream: false,
    requestSerialize: () => Buffer.alloc(0), requestDeserialize: () => ({}),
    responseSerialize: () => Buffer.alloc(0), responseDeserialize: (b: Buffer) => (b.length >= 2 && b[0] === 0x08 ? b[1]! : 0),
  },
}, "Health");
function grpcHealth(addr: string): Promise<string> {
  const c = new HealthClient(addr, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) => {
    (c as unknown as { check(r: object, cb: (e: Error | null, v: number) => void): void }).check({}, (e, v) => {
      c.close();
      if (e) reject(e);
      else resolve(["UNKNOWN", "SERVING", "NOT_SERVING"][v] ?? String(v));
    });
  });
}

async function makeStore(path: string, leases: number): Promise<void> {
  const s = new SqliteLeaseStore(path);
  for (let i = 1; i <= leases; i++) {
    await s.create({ subnet: `10.244.${i}.0/24`, nodeName: `node-${i}`, publicIP: `198.18.0.${i}`, attrs: { type: "vxlan", vni: 1, vtepMac: `0e:00:00:00:00:${i.toString(16).padStart(2, "0")}` }, expiresAt: Date.now() + 3_600_000 });
  }
  await s.close();
}

describe("SQLite store file checks (real binary)", () => {
  let dir: ReturnType<typeof tempDir>;
  let netconf: string;
  const running: ServerProcess[] = [];
  const args = (db: string, ...extra: string[]) => ["--insecure", "--store", `sqlite:${db}`, "--network-config", netconf, ...extra];
  const run = (a: string[]) => runBin(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", ...a]);
  beforeAll(() => {
    dir = tempDir("weft-storefile-");
    netconf = writeNetConf(dir.path);
  });
  afterEach(async () => {
    await Promise.all(running.splice(0).map((s) => s.stop("SIGKILL")));
  });
  afterAll(() => dir.cleanup());

  it("refuses an existing empty file, leaves it untouched, and starts an empty store there with --init-store", async () => {
    const db = join(dir.path, "empty.db");
    writeFileSync(db, "");
    const r = await run(args(db));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`SQLite store ${db} exists but is empty (0 bytes)`);
    expect(r.stderr).toMatch(/Restore it from a backup, or pass --init-store/);
    noStack(r.stderr);
    expect(statSync(db).size).toBe(0);
    expect(existsSync(`${db}-wal`)).toBe(false);

    const s = await startServer(args(db, "--init-store"));
    running.push(s);
    const { client, call } = connect(s.grpcAddr);
    expect((await call("acquireLease", vxlanReq(1))).subnet).toMatch(/^10\.244\./);
    client.close();
  });

  it("refuses a file that is not SQLite, even with --init-store, and leaves it untouched", async () => {
    const db = join(dir.path, "text.db");
    writeFileSync(db, "these are not the leases you are looking for\n");
    for (const extra of [[], ["--init-store"]]) {
      const r = await run(args(db, ...extra));
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`SQLite store ${db} is not a SQLite database`);
      expect(r.stderr).toMatch(/restore the lease database from a backup, or move this file away/);
      noStack(r.stderr);
    }
    expect(readFileSync(db, "utf8")).toBe("these are not the leases you are looking for\n");
  });

  it("refuses a SQLite file of another program", async () => {
    const db = join(dir.path, "other.db");
    const o = new Database(db);
    o.exec("CREATE TABLE songs (title TEXT)");
    o.close();
    const r = await run(args(db));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`SQLite store ${db} is not a weft lease store`);
    noStack(r.stderr);
  });

  it("refuses a corrupt database, naming the path and the fix", async () => {
    const db = join(dir.path, "corrupt.db");
    await makeStore(db, 20);
    // Page 1 (the schema) stays; every table's pages become garbage.
    const size = statSync(db).size;
    const fd = openSync(db, "r+");
    writeSync(fd, Buffer.alloc(size - 4096, 0xa5), 0, size - 4096, 4096);
    closeSync(fd);
    const r = await run(args(db));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`SQLite store ${db.replace(/[.]/g, "\\.")} is corrupt \\(.+\\); restore it from a backup`));
    noStack(r.stderr);
  });

  it("refuses a store in a directory that does not exist, with the mkdir to run", async () => {
    const db = join(dir.path, "no", "such", "dir", "leases.db");
    const r = await run(args(db));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`directory ${join(dir.path, "no", "such", "dir")} does not exist; create it (mkdir -p`);
    noStack(r.stderr);
  });

  it("makes a new store where no file exists, and keeps it across restarts", async () => {
    const db = join(dir.path, "fresh.db");
    const s = await startServer(args(db));
    const { client, call } = connect(s.grpcAddr);
    const lease = await call("acquireLease", vxlanReq(2));
    client.close();
    await s.stop();
    const again = await startServer(args(db));
    running.push(again);
    const leases = await (await fetch(`${again.httpUrl}/v1/leases`)).json() as { subnet: string }[];
    expect(leases.map((l) => l.subnet)).toEqual([lease.subnet]);
  });
});

// Needs root for mount namespaces and tmpfs.
const canMount = requireOrSkip(process.getuid?.() === 0 ? [] : ["root (mount namespaces and tmpfs)"], "store fault tests")
  && requireTools({ unshare: "util-linux", mount: "mount" }, "store fault tests");

/** Runs the server with a tmpfs of `size` at `mnt`, seen only by the server; `setup` runs there first (sh). */
function inTmpfs(mnt: string, size: string, setup = ""): Wrap {
  return (argv) => ["unshare", ["-m", "--propagation", "private", "sh", "-c", `mount -t tmpfs -o size=${size},mode=0700 tmpfs "$0" && ${setup ? `${setup} && ` : ""}exec "$@"`, mnt, ...argv]];
}

describe.skipIf(!canMount)("a disk that fills up or turns read-only (tmpfs in a private mount namespace)", () => {
  let dir: ReturnType<typeof tempDir>;
  let netconf: string;
  const running: ServerProcess[] = [];
  beforeAll(() => {
    dir = tempDir("weft-diskfull-");
    netconf = writeNetConf(dir.path);
  });
  afterEach(async () => {
    await Promise.all(running.splice(0).map((s) => s.stop("SIGKILL")));
  });
  afterAll(() => dir.cleanup());

  it("disk full: acquires fail with UNAVAILABLE, the server logs it and is not ready, no lease is lost; it recovers when space returns", async () => {
    const mnt = join(dir.path, "full");
    mkdirSync(mnt);
    const s = await startServer(["--insecure", "--store", `sqlite:${mnt}/leases.db`, "--network-config", netconf, "--lease-ttl", "1h"], inTmpfs(mnt, "2m"));
    running.push(s);
    // The tmpfs as the server sees it.
    const seen = `/proc/${s.proc.pid}/root${mnt}`;
    expect(existsSync(`${seen}/leases.db`)).toBe(true);
    expect(existsSync(`${mnt}/leases.db`)).toBe(false);
    const { client, call } = connect(s.grpcAddr);
    const before = await Promise.all([1, 2, 3, 4, 5].map((i) => call("acquireLease", vxlanReq(i))));
    expect((await readyz(s)).code).toBe(200);

    // Fill the disk, then keep acquiring until a write needs space it cannot get
    // (the WAL may still have room for a few).
    const fd = openSync(`${seen}/fill`, "w");
    try {
      for (;;) writeSync(fd, Buffer.alloc(64 << 10));
    } catch (err) {
      expect((err as NodeJS.ErrnoException).code).toBe("ENOSPC");
    } finally {
      closeSync(fd);
    }
    let failedAt = 0;
    let err: grpc.ServiceError | undefined;
    for (let i = 100; i < 2100 && !err; i++) {
      try {
        await call("acquireLease", vxlanReq(i));
      } catch (e) {
        err = e as grpc.ServiceError;
        failedAt = i;
      }
    }
    expect(err?.code).toBe(grpc.status.UNAVAILABLE);
    expect(err?.details).toMatch(/full/);
    const nr = await waitFor(async () => { const r = await readyz(s); return r.code === 503 && r; }, "/readyz to say not ready");
    expect(nr.body.reason).toMatch(/^lease store writes fail: SQLite write failed: database or disk is full/);
    expect(s.output()).toMatch(/"level":50.*"lease store writes fail; not ready until a write succeeds again"/);
    expect(await grpcHealth(s.grpcAddr)).toBe("NOT_SERVING");
    // Every acknowledged lease is still there; the failed one left nothing behind.
    const during = await (await fetch(`${s.httpUrl}/v1/leases`)).json() as { subnet: string; nodeName: string }[];
    for (const l of before) expect(during.map((d) => d.subnet)).toContain(l.subnet);
    expect(during.map((d) => d.nodeName)).not.toContain(`node-${failedAt}`);
    const acknowledged = during.length;

    rmSync(`${seen}/fill`);
    await waitFor(async () => (await readyz(s)).code === 200, "/readyz to recover", 20_000);
    expect(s.output()).toMatch(/"lease store writes succeed again after \d+s; ready"/);
    expect(await grpcHealth(s.grpcAddr)).toBe("SERVING");
    const after = await call("acquireLease", vxlanReq(failedAt));
    const all = await (await fetch(`${s.httpUrl}/v1/leases`)).json() as { subnet: string }[];
    expect(all).toHaveLength(acknowledged + 1);
    expect(all.map((d) => d.subnet)).toContain(after.subnet);
    client.close();
    // The log says it once, not once per failed write.
    expect(s.output().match(/lease store writes fail; not ready/g)).toHaveLength(1);
  }, 120_000);

  it("refuses to start on a full disk, saying so", async () => {
    const mnt = join(dir.path, "fullstart");
    mkdirSync(mnt);
    const src = join(dir.path, "seed-full.db");
    await makeStore(src, 3);
    const r = await runBin(["--insecure", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--store", `sqlite:${mnt}/leases.db`, "--network-config", netconf],
      inTmpfs(mnt, "2m", `cp "${src}" "${mnt}/leases.db" && (dd if=/dev/zero of="${mnt}/fill" bs=64k 2>/dev/null; true)`));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`SQLite store ${mnt}/leases\\.db cannot be opened \\(.+\\); the disk holding ${mnt} is full \\(\\d+ bytes free\\); free some space`));
    noStack(r.stderr);
  });

  it("refuses to start on a read-only disk, with a clear error", async () => {
    const mnt = join(dir.path, "rostart");
    mkdirSync(mnt);
    const src = join(dir.path, "seed.db");
    await makeStore(src, 3);
    const r = await runBin(["--insecure", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--store", `sqlite:${mnt}/leases.db`, "--network-config", netconf],
      inTmpfs(mnt, "8m", `cp "${src}" "${mnt}/leases.db" && mount -o remount,ro "${mnt}"`));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`SQLite store ${mnt}/leases.db: the file is on a read-only file system; give --store a path on a writable disk`);
    noStack(r.stderr);
  });
});

describe.skipIf(!etcdAvailable())("etcd unreachable", () => {
  let etcd: EtcdProcess | undefined;
  let s: ServerProcess | undefined;
  let dir: ReturnType<typeof tempDir>;
  beforeAll(async () => {
    dir = tempDir("weft-etcdfault-");
    etcd = await startEtcd();
  });
  afterAll(async () => {
    await s?.stop("SIGKILL");
    await etcd?.stop();
    dir.cleanup();
  });

  it("makes the server not ready while etcd is down, and ready again when it is back", async () => {
    s = await startServer(["--insecure", "--store", `etcd:${etcd!.endpoints[0]}`, "--etcd-prefix", "/weft-fault", "--network-config", writeNetConf(dir.path), "--lease-ttl", "5s"]);
    expect((await readyz(s)).code).toBe(200);
    await etcd!.kill("SIGKILL");
    const nr = await waitFor(async () => { const r = await readyz(s!); return r.code === 503 && r; }, "not ready while etcd is down", 30_000);
    expect(nr.body.reason).toMatch(/^lease store writes fail: /);
    await etcd!.restart();
    await waitFor(async () => (await readyz(s!)).code === 200, "ready once etcd is back", 30_000);
  }, 90_000);
});
