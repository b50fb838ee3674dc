// The lease server as users run it: the real binary, a real SQLite file,
// real gRPC on 127.0.0.1.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import * as grpc from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { WatchLeasesResponse_Kind as Kind, LeaseEvent_Type } from "../../gen/weft/v1/lease.js";
import { connect, runBin, startServer, vxlanReq, watch, writeNetConf, type ServerProcess } from "./server-process.js";
import { tempDir, waitFor } from "./helpers.js";
import { FLAGS } from "../src/config.js";
import { requireTools } from "../../test/tools.js";


describe("weft-lease-server (real process, SQLite, gRPC)", () => {
  let dir: ReturnType<typeof tempDir>;
  let netconf: string;
  const running: ServerProcess[] = [];
  const start = async (extra: string[] = [], db = join(dir.path, "leases.db")) => {
    const s = await startServer(["--insecure", "--store", `sqlite:${db}`, "--network-config", netconf, ...extra]);
    running.push(s);
    return s;
  };
  beforeAll(() => {
    dir = tempDir("weft-int-");
    netconf = writeNetConf(dir.path);
  });
  afterEach(async () => {
    await Promise.all(running.splice(0).map((s) => s.stop("SIGKILL")));
  });
  afterAll(() => dir.cleanup());

  it("hands out distinct subnets to 250 concurrent acquisitions", async () => {
    const s = await start([], join(dir.path, "concurrent.db"));
    const { client, call } = connect(s.grpcAddr);
    const leases = await Promise.all(Array.from({ length: 250 }, (_, i) => call("acquireLease", vxlanReq(i + 1))));
    expect(new Set(leases.map((l) => l.subnet)).size).toBe(250);
    expect(new Set(leases.map((l) => l.nodeName)).size).toBe(250);
    client.close();
  }, 60_000);

  it("keeps subnets unique under hundreds of concurrent acquisitions, and says RESOURCE_EXHAUSTED when full", async () => {
    const smallDir = join(dir.path, "small");
    mkdirSync(smallDir, { recursive: true });
    const small = writeNetConf(smallDir, { Network: "10.244.0.0/16", SubnetMax: "10.244.200.0" });
    const s = await startServer(["--insecure", "--store", `sqlite:${join(dir.path, "full.db")}`, "--network-config", small]);
    running.push(s);
    const { client, call } = connect(s.grpcAddr);
    const results = await Promise.allSettled(Array.from({ length: 260 }, (_, i) => call("acquireLease", vxlanReq(i + 1))));
    const ok = results.filter((r) => r.status === "fulfilled").map((r) => (r as PromiseFulfilledResult<{ subnet: string }>).value.subnet);
    const failed = results.filter((r) => r.status === "rejected").map((r) => (r as PromiseRejectedResult).reason as grpc.ServiceError);
    expect(ok).toHaveLength(200);
    expect(new Set(ok).size).toBe(200);
    expect(failed).toHaveLength(60);
    for (const e of failed) {
      expect(e.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      expect(e.details).toMatch(/no free subnet left in 10\.244\.0\.0\/16/);
    }
    const rest = await (await fetch(`${s.httpUrl}/v1/leases`)).json() as unknown[];
    expect(rest).toHaveLength(200);
    client.close();
  }, 60_000);

  it("gives a node the same subnet after a server restart and after release", async () => {
    const db = join(dir.path, "sticky.db");
    let s = await start([], db);
    let c = connect(s.grpcAddr);
    await c.call("acquireLease", vxlanReq(1));
    const first = await c.call("acquireLease", vxlanReq(2));
    c.client.close();
    await s.stop();
    s = await start([], db);
    c = connect(s.grpcAddr);
    expect((await c.call("acquireLease", vxlanReq(2))).subnet).toBe(first.subnet);
    await c.call("releaseLease", { nodeName: "node-2", subnet: first.subnet });
    await c.call("releaseLease", { nodeName: "node-2", subnet: first.subnet });
    await c.call("acquireLease", vxlanReq(3));
    expect((await c.call("acquireLease", vxlanReq(2))).subnet).toBe(first.subnet);
    c.client.close();
  });

  it("answers invalid requests with INVALID_ARGUMENT naming the field", async () => {
    const s = await start([], join(dir.path, "invalid.db"));
    const { client, call } = connect(s.grpcAddr);
    const cases: [unknown, RegExp][] = [
      [{ ...vxlanReq(1), nodeName: "" }, /^node_name: is empty/],
      [{ ...vxlanReq(1), nodeName: "Bad_Name" }, /^node_name: /],
      [{ ...vxlanReq(1), publicIp: "198.18.0" }, /^public_ip: "198\.18\.0" is not an IPv4 address/],
      [{ nodeName: "n", publicIp: "198.18.0.1" }, /^backend_attributes: missing/],
      [{ nodeName: "n", publicIp: "198.18.0.1", hostGw: {} }, /backend_attributes: are for host-gw but the network's backend is vxlan/],
      [{ nodeName: "n", publicIp: "198.18.0.1", vxlan: { vni: 7, vtepMac: "0e:00:00:00:00:01" } }, /vxlan\.vni: 7 differs from the network's VNI 1/],
    ];
    for (const [req, re] of cases) {
      const err = await call("acquireLease", req).then(() => undefined, (e: grpc.ServiceError) => e);
      expect(err?.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(err?.details).toMatch(re);
    }
    const renew = await call("renewLease", { nodeName: "node-1", subnet: "10.244.9.0/24" }).catch((e: grpc.ServiceError) => e);
    expect((renew as grpc.ServiceError).code).toBe(grpc.status.NOT_FOUND);
    for (const method of ["renewLease", "releaseLease"] as const) {
      // Long, but under the 16 KiB request limit (larger requests: grpc-limits.test.ts).
      for (const subnet of ["", "10.244.9", "x".repeat(10_000)]) {
        const err = await call(method, { nodeName: "node-1", subnet }, ).catch((e: grpc.ServiceError) => e) as grpc.ServiceError;
        expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
        expect(err.details).toMatch(/^subnet: /);
        expect(err.details.length).toBeLessThan(300);
      }
    }
    const longName = await call("acquireLease", { ...vxlanReq(1), nodeName: "a".repeat(10_000) }).catch((e: grpc.ServiceError) => e) as grpc.ServiceError;
    expect(longName.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(longName.details).toMatch(/^node_name: /);
    expect(await (await fetch(`${s.httpUrl}/v1/leases`)).json()).toEqual([]);
    client.close();
  });

  it("answers undecodable requests and out-of-range revisions with INVALID_ARGUMENT, not INTERNAL", async () => {
    const s = await start([], join(dir.path, "garbage.db"));
    const raw = new grpc.Client(s.grpcAddr, grpc.credentials.createInsecure());
    const send = (path: string, bytes: Buffer) => new Promise<grpc.ServiceError>((resolve) => {
      raw.makeUnaryRequest(path, (b: Buffer) => b, (b: Buffer) => b, bytes, (e) => resolve(e!));
    });
    const garbage = await send("/weft.v1.LeaseService/AcquireLease", Buffer.from([0x0a, 0xff, 0xff, 0xff]));
    expect(garbage.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(garbage.details).toMatch(/^request: cannot be decoded/);
    // from_revision = 2^60 (field 1, varint)
    const big = Buffer.from([0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10]);
    const stream = raw.makeServerStreamRequest("/weft.v1.LeaseService/WatchLeases", (b: Buffer) => b, (b: Buffer) => b, big);
    const err = await new Promise<grpc.ServiceError>((resolve) => stream.on("error", resolve));
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    raw.close();
  });

  it("streams a snapshot, then changes; a watcher sees expiry with the lease's last attributes", async () => {
    const s = await start(["--lease-ttl", "5s"], join(dir.path, "expiry.db"));
    const { client, call } = connect(s.grpcAddr);
    const kept = await call("acquireLease", vxlanReq(1));
    const w = watch(client, 0);
    await waitFor(() => w.messages.some((m) => m.kind === Kind.KIND_SNAPSHOT_COMPLETE), "snapshot");
    expect(w.messages[0]!.leases.map((l) => l.subnet)).toEqual([kept.subnet]);
    const doomed = await call("acquireLease", vxlanReq(2));
    // Keep node-1 alive; node-2 stops renewing.
    const renew = setInterval(() => void call("renewLease", { nodeName: "node-1", subnet: kept.subnet }).catch(() => undefined), 1000);
    try {
      const removed = await waitFor(() => w.messages.flatMap((m) => m.events).find((e) => e.type === LeaseEvent_Type.TYPE_REMOVED), "expiry event", 12_000);
      expect(removed.lease).toMatchObject({ subnet: doomed.subnet, nodeName: "node-2", publicIp: "198.18.0.2", vxlan: { vtepMac: "0e:00:00:00:00:02" } });
      const live = await (await fetch(`${s.httpUrl}/v1/leases`)).json() as { nodeName: string }[];
      expect(live.map((l) => l.nodeName)).toEqual(["node-1"]);
    } finally {
      clearInterval(renew);
      w.stream.cancel();
      client.close();
    }
  }, 30_000);

  it("resumes a watch from a revision with only the missed changes, also across a server restart", async () => {
    const db = join(dir.path, "resume.db");
    let s = await start([], db);
    let c = connect(s.grpcAddr);
    await c.call("acquireLease", vxlanReq(1));
    const w = watch(c.client, 0);
    const done = await waitFor(() => w.messages.find((m) => m.kind === Kind.KIND_SNAPSHOT_COMPLETE), "snapshot");
    w.stream.cancel();
    await c.call("acquireLease", vxlanReq(2));
    await c.call("releaseLease", { nodeName: "node-1", subnet: "10.244.1.0/24" });
    c.client.close();
    await s.stop();
    s = await start([], db);
    c = connect(s.grpcAddr);
    const r = watch(c.client, done.revision);
    await waitFor(() => r.messages.some((m) => m.kind === Kind.KIND_PROGRESS), "caught-up progress");
    expect(r.messages.some((m) => m.kind === Kind.KIND_SNAPSHOT)).toBe(false);
    expect(r.messages.flatMap((m) => m.events).map((e) => [e.type, e.lease!.nodeName])).toEqual([[LeaseEvent_Type.TYPE_ADDED, "node-2"], [LeaseEvent_Type.TYPE_REMOVED, "node-1"]]);
    r.stream.cancel();
    c.client.close();
  });

  it("sends a resync snapshot when the revision belongs to a replaced database", async () => {
    const db = join(dir.path, "replaced.db");
    let s = await start([], db);
    let c = connect(s.grpcAddr);
    for (const n of [1, 2]) await c.call("acquireLease", vxlanReq(n));
    const w = watch(c.client, 0);
    const done = await waitFor(() => w.messages.find((m) => m.kind === Kind.KIND_SNAPSHOT_COMPLETE), "snapshot");
    expect(done.storeId).toMatch(/^[0-9a-f]{12}$/);
    w.stream.cancel();
    c.client.close();
    await s.stop();
    for (const f of [db, `${db}-wal`, `${db}-shm`]) rmSync(f, { force: true });
    s = await start([], db);
    c = connect(s.grpcAddr);
    for (const n of [3, 4, 5]) await c.call("acquireLease", vxlanReq(n));
    const r = watch(c.client, done.revision, done.storeId);
    const complete = await waitFor(() => r.messages.find((m) => m.kind === Kind.KIND_SNAPSHOT_COMPLETE), "resync snapshot");
    expect(r.messages[0]).toMatchObject({ kind: Kind.KIND_SNAPSHOT, resync: true });
    expect(r.messages.flatMap((m) => m.leases).map((l) => l.nodeName).sort()).toEqual(["node-3", "node-4", "node-5"]);
    expect(complete.storeId).not.toBe(done.storeId);
    // The same store id resumes normally.
    const same = watch(c.client, complete.revision, complete.storeId);
    await waitFor(() => same.messages.some((m) => m.kind === Kind.KIND_PROGRESS), "progress");
    expect(same.messages.some((m) => m.kind === Kind.KIND_SNAPSHOT)).toBe(false);
    r.stream.cancel();
    same.stream.cancel();
    c.client.close();
  });

  it("loses no acknowledged lease and corrupts nothing when killed with SIGKILL mid-storm", async () => {
    const db = join(dir.path, "kill9.db");
    const bigDir = join(dir.path, "big");
    mkdirSync(bigDir, { recursive: true });
    const big = writeNetConf(bigDir, { Network: "10.0.0.0/8" });
    const s = await startServer(["--insecure", "--store", `sqlite:${db}`, "--network-config", big]);
    running.push(s);
    const { client, call } = connect(s.grpcAddr);
    const acked = new Map<string, string>();
    const total = 10_000;
    // Killed from the reply callback itself, so the storm is still in flight.
    const storm = Array.from({ length: total }, (_, i) => call("acquireLease", vxlanReq(i + 1, `k-${i}`)).then((l) => {
      acked.set(l.nodeName, l.subnet);
      if (acked.size === 200) s.proc.kill("SIGKILL");
    }, () => undefined));
    await Promise.all(storm);
    client.close();
    expect(acked.size).toBeGreaterThanOrEqual(200);
    expect(acked.size).toBeLessThan(total);

    const check = new Database(db, { readonly: true });
    expect(check.pragma("integrity_check", { simple: true })).toBe("ok");
    check.close();
    const again = await startServer(["--insecure", "--store", `sqlite:${db}`, "--network-config", big]);
    running.push(again);
    const after = await (await fetch(`${again.httpUrl}/v1/leases`)).json() as { nodeName: string; subnet: string }[];
    const bySubnet = new Set(after.map((l) => l.subnet));
    expect(bySubnet.size).toBe(after.length);
    const byNode = new Map(after.map((l) => [l.nodeName, l.subnet]));
    for (const [node, subnet] of acked) expect(byNode.get(node)).toBe(subnet);
    // Each node keeps its subnet when it comes back.
    const c2 = connect(again.grpcAddr);
    const [someNode, itsSubnet] = [...acked][0]!;
    const n = Number(someNode.slice(2)) + 1;
    expect(after.length).toBeGreaterThanOrEqual(acked.size);
    expect((await c2.call("acquireLease", vxlanReq(n, someNode))).subnet).toBe(itsSubnet);
    c2.client.close();
  }, 60_000);

  it("serves the gRPC health service", async () => {
    const s = await start([], join(dir.path, "health.db"));
    const { service } = await import("grpc-health-check");
    const Health = grpc.makeGenericClientConstructor(service as grpc.ServiceDefinition, "grpc.health.v1.Health");
    const hc = new Health(s.grpcAddr, grpc.credentials.createInsecure()) as unknown as grpc.Client & { check: (r: unknown, cb: (e: Error | null, v: { status: string | number }) => void) => void };
    for (const name of ["", "weft.v1.LeaseService"]) {
      const res = await new Promise<{ status: string | number }>((resolve, reject) => hc.check({ service: name }, (e, v) => (e ? reject(e) : resolve(v))));
      expect(["SERVING", 1]).toContain(res.status);
    }
    hc.close();
  });

  it("serves REST: leases, network, reservations and revocation, with clear errors", async () => {
    const token = "rest-test-token-0123456789abcdefghijklmnopqrstuvwxyz";
    const tokenFile = join(dir.path, "admin-token");
    writeFileSync(tokenFile, token, { mode: 0o600 });
    const s = await start(["--admin-token-file", tokenFile], join(dir.path, "rest.db"));
    const { client, call } = connect(s.grpcAddr);
    const w = watch(client, 0);
    await waitFor(() => w.messages.some((m) => m.kind === Kind.KIND_SNAPSHOT_COMPLETE), "snapshot");
    const res = (path: string, init?: RequestInit) => fetch(`${s.httpUrl}${path}`, { ...init, headers: { authorization: `Bearer ${token}`, ...init?.headers } });
    const json = { "content-type": "application/json" };

    expect((await res("/healthz")).status).toBe(200);
    expect((await res("/readyz")).status).toBe(200);
    expect(await (await res("/v1/network")).json()).toMatchObject({ network: "10.244.0.0/16", subnetLen: 24, subnetMin: "10.244.1.0", subnetMax: "10.244.255.0", backend: { type: "vxlan", vni: 1, port: 8472 }, subnets: 255, leases: 0 });

    const created = await res("/v1/reservations", { method: "POST", headers: json, body: JSON.stringify({ subnet: "10.244.1.0/24", nodeName: "node-9" }) });
    expect(created.status).toBe(201);
    const bad = await res("/v1/reservations", { method: "POST", headers: json, body: JSON.stringify({ subnet: "10.99.0.0/24", nodeName: "node-8" }) });
    expect(bad.status).toBe(400);
    expect(bad.headers.get("content-type")).toBe("application/problem+json; charset=utf-8");
    expect(await bad.json()).toMatchObject({ status: 400, code: "INVALID_ARGUMENT", detail: expect.stringMatching(/^subnet: /) });
    for (const body of [{ subnet: "10.244.2.0/24", nodeName: "n", extra: 1 }, { subnet: "10.244.2.0/24", nodeName: 123 }]) {
      const strict = await res("/v1/reservations", { method: "POST", headers: json, body: JSON.stringify(body) });
      expect(strict.status).toBe(400);
      expect(await strict.json()).toMatchObject({ status: 400, code: "INVALID_ARGUMENT" });
    }
    const missing = await res("/v1/reservations", { method: "POST", headers: json, body: JSON.stringify({ subnet: "10.244.2.0/24" }) });
    expect(missing.status).toBe(400);
    expect((await missing.json() as { detail: string }).detail).toMatch(/nodeName/);
    expect(await (await res("/v1/reservations")).json()).toEqual([{ subnet: "10.244.1.0/24", nodeName: "node-9" }]);

    expect((await call("acquireLease", vxlanReq(1))).subnet).toBe("10.244.2.0/24");
    expect((await call("acquireLease", vxlanReq(9))).subnet).toBe("10.244.1.0/24");
    const leases = await (await res("/v1/leases")).json() as Record<string, unknown>[];
    expect(leases[0]).toEqual({ subnet: "10.244.1.0/24", nodeName: "node-9", publicIP: "198.18.0.9", backendType: "vxlan", expiresAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/), revision: expect.any(Number), vtepMac: "0e:00:00:00:00:09", vni: 1 });

    const revoked = await res("/v1/leases/10.244.2.0-24", { method: "DELETE" });
    expect(revoked.status).toBe(200);
    expect(await revoked.json()).toMatchObject({ nodeName: "node-1" });
    expect((await res("/v1/leases/10.244.2.0-24", { method: "DELETE" })).status).toBe(404);
    await waitFor(() => w.messages.flatMap((m) => m.events).some((e) => e.type === LeaseEvent_Type.TYPE_REMOVED && e.lease!.nodeName === "node-1"), "revocation seen by the watcher");
    expect((await res("/v1/reservations/10.244.1.0%2F24", { method: "DELETE" })).status).toBe(204);
    expect((await res("/v1/reservations/10.244.1.0-24", { method: "DELETE" })).status).toBe(404);
    expect((await res("/nope")).status).toBe(404);
    const badUrl = await res("/v1/leases/%E0%A4%A", { method: "DELETE" });
    expect(badUrl.status).toBe(400);
    expect(await badUrl.json()).toMatchObject({ status: 400, code: "INVALID_ARGUMENT" });
    w.stream.cancel();
    client.close();
  });

  it.skipIf(!requireTools({ promtool: "prometheus" }, "the metrics lint"))("exposes Prometheus metrics that pass promtool's checks", async () => {
    const s = await start([], join(dir.path, "metrics.db"));
    const { client, call } = connect(s.grpcAddr);
    const w = watch(client, 0);
    await call("acquireLease", vxlanReq(1));
    await call("renewLease", { nodeName: "node-1", subnet: "10.244.1.0/24" });
    await waitFor(() => w.messages.some((m) => m.kind === Kind.KIND_EVENTS), "an event");
    const text = await (await fetch(`${s.httpUrl}/metrics`)).text();
    for (const name of ["weft_lease_server_leases 1", "weft_lease_server_watch_streams 1", 'weft_lease_server_acquire_total{outcome="created"} 1', 'weft_lease_server_renew_total{outcome="ok"} 1', "weft_lease_server_acquire_duration_seconds_bucket", "weft_lease_server_watch_events_sent_total"]) {
      expect(text).toContain(name);
    }
    const check = spawnSync("promtool", ["check", "metrics"], { input: text, encoding: "utf8" });
    expect(check.stdout + check.stderr).toBe("");
    expect(check.status).toBe(0);
    w.stream.cancel();
    client.close();
  });
});

describe("weft-lease-server flags and config errors", () => {
  const dir = tempDir("weft-flags-");
  afterAll(() => dir.cleanup());
  const conf = (c: unknown) => writeNetConf(dir.path, c);

  it("prints help", async () => {
    const r = await runBin(["--help"]);
    expect(r.code).toBe(0);
    for (const f of Object.keys(FLAGS)) expect(r.stdout).toContain(`--${f}`);
    expect(r.stdout).toContain("Every flag can also be set as WEFT_<FLAG>");
  });

  it.each([
    [["--bogus"], /unknown flag --bogus/],
    [["--insecure", "--lease-ttl", "soon"], /--lease-ttl: "soon" is not a duration; write it like 30s/],
    [["--insecure", "--listen", "nowhere"], /--listen: "nowhere" is not HOST:PORT/],
    [["--insecure", "--lease-ttl", "60d"], /--lease-ttl: 60d is longer than 30 days/],
    [["--insecure", "--lease-ttl", "1s"], /--lease-ttl: 1s is shorter than 5s/],
    [["--insecure", "--store", "etcd:127.0.0.1:2379"], /--store: etcd endpoint "127.0.0.1:2379" is not http\(s\):\/\/HOST:PORT/],
    [["--insecure", "--store", "etcd:https://127.0.0.1:2379"], /--store has https:\/\/ etcd endpoints: pass --etcd-cafile/],
    [["--insecure", "--store", "etcd:http://127.0.0.1:2379", "--etcd-certfile", "/x"], /--etcd-certfile and --etcd-keyfile go together/],
    [["--insecure", "--store", "etcd:http://127.0.0.1:2379", "--etcd-prefix", "weft"], /--etcd-prefix: "weft" is not a key prefix/],
    [["--insecure", "--store", "postgres://x"], /--store: .* is not a store; use --store sqlite:.* or --store etcd:/],
    [["--network-config", "/nonexistent/net.json", "--insecure"], /--network-config: cannot read \/nonexistent\/net\.json \(ENOENT\)/],
    [[], /gRPC needs TLS: pass --tls-cert and --tls-key .* or --insecure/],
    [["--insecure", "--tls-cert", "/x"], /--insecure conflicts with/],
  ])("rejects %j with exit 2 and a message, never a stack trace", async (args, re) => {
    const defaults = args.includes("--network-config") ? [] : ["--network-config", conf({ Network: "10.244.0.0/16" })];
    const store = args.includes("--store") ? [] : ["--store", `sqlite:${join(dir.path, "x.db")}`];
    const r = await runBin([...args, ...defaults, ...store]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(re);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it.each([
    ["{not json", /network-config .*not valid JSON/],
    [JSON.stringify({ Network: "10.244.0.0/16", SubnetLen: 40 }), /SubnetLen: 40 is larger than 30; use a SubnetLen of 30 or less/],
    [JSON.stringify({ Network: "10.244.3.0/16" }), /Network: 10\.244\.3\.0\/16 has host bits set; use 10\.244\.0\.0\/16/],
    [JSON.stringify({ Network: "10.244.0.0/16", Backend: { Type: "udp" } }), /Backend\.Type: "udp" is not supported/],
  ])("rejects a bad network config %s naming the field and the fix", async (text, re) => {
    const r = await runBin(["--insecure", "--network-config", conf(text), "--store", `sqlite:${join(dir.path, "y.db")}`]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(re);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(existsSync(join(dir.path, "y.db"))).toBe(false);
  });

  it("refuses to share its SQLite file with a running server", async () => {
    const c = conf({ Network: "10.244.0.0/16" });
    const db = join(dir.path, "shared.db");
    const first = await startServer(["--insecure", "--network-config", c, "--store", `sqlite:${db}`]);
    try {
      const r = await runBin(["--insecure", "--network-config", c, "--store", `sqlite:${db}`, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/shared\.db is in use by another process/);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    } finally {
      await first.stop();
    }
  });

  it("exits 1 with a clear message when the gRPC port is taken", async () => {
    const c = conf({ Network: "10.244.0.0/16" });
    const first = await startServer(["--insecure", "--network-config", c, "--store", `sqlite:${join(dir.path, "p1.db")}`]);
    try {
      const r = await runBin(["--insecure", "--network-config", c, "--store", `sqlite:${join(dir.path, "p2.db")}`, "--listen", first.grpcAddr, "--http-listen", "127.0.0.1:0"]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/--listen 127\.0\.0\.1:\d+: cannot listen .*pick a free port/);
    } finally {
      await first.stop();
    }
  });
});

describe.skipIf(!requireTools({ openssl: "openssl" }, "the mTLS tests"))("weft-lease-server with mTLS", () => {
  const dir = tempDir("weft-tls-");
  const pki = (f: string) => join(dir.path, f);
  afterAll(() => dir.cleanup());

  beforeAll(() => {
    const ssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir.path, stdio: "pipe" });
    ssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=weft-test-ca", "-days", "1");
    const leaf = (name: string, san: string) => {
      ssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${name}`);
      execFileSync("sh", ["-c", `printf 'subjectAltName=${san}\\n' > ${name}.ext`], { cwd: dir.path });
      ssl("x509", "-req", "-in", `${name}.csr`, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", `${name}.crt`, "-days", "1", "-extfile", `${name}.ext`);
    };
    leaf("server", "IP:127.0.0.1,DNS:localhost");
    leaf("node-1", "DNS:node-1");
  });

  it("lets a client act only for the node name in its certificate", async () => {
    const s = await startServer(["--tls-cert", pki("server.crt"), "--tls-key", pki("server.key"), "--tls-client-ca", pki("ca.crt"),
      "--store", `sqlite:${pki("l.db")}`, "--network-config", writeNetConf(dir.path), "--state-dir", pki("state")]);
    const { readFileSync } = await import("node:fs");
    const creds = grpc.credentials.createSsl(readFileSync(pki("ca.crt")), readFileSync(pki("node-1.key")), readFileSync(pki("node-1.crt")));
    const { client, call } = connect(s.grpcAddr, creds);
    try {
      expect((await call("acquireLease", vxlanReq(1))).nodeName).toBe("node-1");
      const denied = await call("acquireLease", vxlanReq(2)).catch((e: grpc.ServiceError) => e);
      expect((denied as grpc.ServiceError).code).toBe(grpc.status.PERMISSION_DENIED);
      expect((denied as grpc.ServiceError).details).toMatch(/certificate is for node-1, not node "node-2"/);
      const relDenied = await call("releaseLease", { nodeName: "node-2", subnet: "10.244.1.0/24" }).catch((e: grpc.ServiceError) => e);
      expect((relDenied as grpc.ServiceError).code).toBe(grpc.status.PERMISSION_DENIED);
      const anon = connect(s.grpcAddr, grpc.credentials.createSsl(readFileSync(pki("ca.crt"))), { "grpc.initial_reconnect_backoff_ms": 100 });
      const noCert = await new Promise<grpc.ServiceError>((resolve) => anon.client.getNetworkConfig({}, new grpc.Metadata(), { deadline: Date.now() + 3000 }, (e) => resolve(e!)));
      // The TLS handshake lets a client without a certificate in (a node joining with a join token has none
      // yet); every LeaseService call then refuses it.
      expect(noCert.code).toBe(grpc.status.PERMISSION_DENIED);
      expect(noCert.details).toMatch(/needs a verified client certificate for every node; start the agent with --join-token-file/);
      anon.client.close();
    } finally {
      client.close();
      await s.stop();
    }
  });
});
