// compose.yaml's lease servers, run as real processes with the commands the
// file gives them (container paths mapped to a temp dir, ports to free ones on
// 127.0.0.1): what init makes is enough for them to start ready on the first
// try, and in profile ha a node joined through one server acquires its lease
// through the other (one etcd, one node CA).
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { createLogger } from "../../lib/src/logger.js";
import { connect, startServer, vxlanReq, type ServerProcess } from "../../lease-server/test/server-process.js";
import { NodeIdentity } from "../../node-agent/src/identity.js";
import { etcdAvailable, startEtcd, type EtcdProcess } from "../etcd.js";
import type { Compose } from "./compose-file.js";

const ROOT = resolve(import.meta.dirname, "../..");
const compose = parse(readFileSync(join(ROOT, "compose.yaml"), "utf8")) as Compose;
const tmp = mkdtempSync(join(tmpdir(), "weft-compose-"));
const pki = join(tmp, "pki");
const running: ServerProcess[] = [];
let etcd: EtcdProcess | undefined;
afterAll(async () => {
  await Promise.all(running.map((s) => s.stop()));
  await etcd?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

/** The service's command on this machine: paths into the temp dir, listeners left to startServer (127.0.0.1:0). */
function commandOf(service: string, store?: string): string[] {
  const data = join(tmp, service);
  mkdirSync(data, { recursive: true });
  return compose.services[service]!.command!
    .filter((a) => !/^--(listen|http-listen)=/.test(a))
    .map((a) => (store && a.startsWith("--store=") ? `--store=${store}` : a))
    .map((a) => a.replace("/etc/weft/pki", pki).replace("/etc/weft/net-conf.json", join(ROOT, "deploy/net-conf.json")).replace("/var/lib/weft", data));
}

function runInit(): void {
  const entry = compose.services.init!.entrypoint!;
  expect(entry.slice(0, 2)).toEqual(["node", "/opt/weft/deploy/compose/init.mjs"]);
  execFileSync(process.execPath, [join(ROOT, "deploy/compose/init.mjs"), pki], { env: { ...process.env, WEFT_SERVER_NAMES: "" }, stdio: "pipe" });
}

async function ready(s: ServerProcess): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const r = await fetch(`${s.httpUrl}/readyz`).catch(() => undefined);
    if (r?.ok) return;
    if (Date.now() > deadline) throw new Error(`not ready after 15 s:\n${s.output()}`);
    await new Promise((res) => setTimeout(res, 200));
  }
}

const admin = () => ({ Authorization: `Bearer ${readFileSync(join(pki, "admin-token"), "utf8").trim()}`, "Content-Type": "application/json" });

async function joinToken(s: ServerProcess): Promise<string> {
  const r = await fetch(`${s.httpUrl}/v1/join-tokens`, { method: "POST", headers: admin(), body: JSON.stringify({ ttl: "10m", uses: 1 }) });
  expect(r.status).toBe(201);
  return ((await r.json()) as { token: string }).token;
}

describe("compose: the default lease server", () => {
  it("starts ready from init's files alone, serves gRPC with TLS for its names and takes the admin token", async () => {
    runInit();
    const s = await startServer(commandOf("lease-server"));
    running.push(s);
    await ready(s);
    await joinToken(s);
    expect((await fetch(`${s.httpUrl}/v1/join-tokens`, { method: "POST", body: "{}", headers: { "Content-Type": "application/json" } })).status).toBe(401);
    // The handshake with tls-ca.crt succeeds for 127.0.0.1; then the call is refused for want of a node certificate.
    const anon = connect(s.grpcAddr, grpc.credentials.createSsl(readFileSync(join(pki, "tls-ca.crt"))));
    const err = await new Promise<grpc.ServiceError>((res) => anon.client.getNetworkConfig({}, new grpc.Metadata(), { deadline: Date.now() + 5000 }, (e) => res(e!)));
    anon.client.close();
    expect(err.code).toBe(grpc.status.PERMISSION_DENIED);
  });
});

describe.runIf(etcdAvailable())("compose profile ha: two lease servers on one etcd", () => {
  it("both get ready, and a node joined through one acquires its lease through the other", async () => {
    runInit();
    etcd = await startEtcd();
    const store = `etcd:${etcd.endpoints.join(",")}`;
    const [a, b] = await Promise.all(["lease-server-1", "lease-server-2"].map((n) => startServer(commandOf(n, store))));
    running.push(a!, b!);
    await Promise.all([ready(a!), ready(b!)]);
    const identity = new NodeIdentity({ nodeName: "node-1", stateDir: join(tmp, "node-1"), servers: [a!.grpcAddr], caFile: join(pki, "tls-ca.crt"), joinToken: await joinToken(a!), log: createLogger("identity", "error") });
    await identity.ensure(AbortSignal.timeout(15_000));
    const tls = identity.tls;
    const { client, call } = connect(b!.grpcAddr, grpc.credentials.createSsl(readFileSync(tls.ca!), readFileSync(tls.key!), readFileSync(tls.cert!)));
    try {
      expect((await call("acquireLease", vxlanReq(1))).nodeName).toBe("node-1");
    } finally {
      client.close();
    }
  });
});
