// The agent's side of node identity against a real in-process lease server
// (TLS on 127.0.0.1, a real SQLite file): joining with a token, the files it
// keeps, restarting without the token, renewal without it, refusals that end
// the agent and unreachable servers that do not, and the lease client moving
// to a renewed certificate without dropping its watch.
import { X509Certificate } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { loadServerConfig } from "../../lease-server/src/config.js";
import { startLeaseServer, type RunningServer } from "../../lease-server/src/server.js";
import { SqliteLeaseStore } from "../../lease-server/src/store/sqlite-lease-store.js";
import { JoinTokens } from "../../lease-server/src/identity/join-tokens.js";
import { SqliteJoinTokenStore } from "../../lease-server/src/identity/sqlite-join-token-store.js";
import { memoryLogger, tempDir, waitFor } from "../../lease-server/test/helpers.js";
import { writeServerPki, type ServerPki } from "../../lease-server/test/identity-pki.js";
import { writeNetConf } from "../../lease-server/test/server-process.js";
import { loadAgentConfig } from "../src/config.js";
import { NodeIdentity } from "../src/identity.js";
import { readNodeCertificate, writeNodeCertificate } from "../src/identity-files.js";
import { LeaseClient, type WatchMessage } from "../src/lease-client.js";

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

let dir: ReturnType<typeof tempDir>;
let pki: ServerPki;
const servers: RunningServer[] = [];
const clients: LeaseClient[] = [];
const stops: AbortController[] = [];
let n = 0;

async function server(): Promise<{ addr: string; tokens: JoinTokens; running: RunningServer }> {
  const name = `s${++n}`;
  const db = join(dir.path, `${name}.db`);
  const cfg = loadServerConfig(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--store", `sqlite:${db}`, "--network-config", writeNetConf(dir.path),
    "--tls-cert", pki.file("server.crt"), "--tls-key", pki.file("server.key"), "--state-dir", join(dir.path, `${name}-state`)])!;
  const store = new SqliteLeaseStore(db);
  const running = await startLeaseServer(cfg, { store, log: memoryLogger().log });
  servers.push(running);
  return { addr: `127.0.0.1:${running.grpcPort}`, tokens: new JoinTokens(new SqliteJoinTokenStore(store.database)), running };
}

function identity(o: { servers: string[]; nodeName?: string; stateDir: string; token?: string; now?: () => number }) {
  const { log, lines } = memoryLogger();
  const id = new NodeIdentity({ nodeName: o.nodeName ?? "node-a", stateDir: o.stateDir, servers: o.servers, caFile: pki.file("server-ca.crt"), joinToken: o.token, log, callTimeoutMs: 2000, now: o.now });
  return { id, lines };
}

function signal(): AbortSignal {
  const c = new AbortController();
  stops.push(c);
  return c.signal;
}

function leaseClient(addr: string, tls: { ca?: string; cert?: string; key?: string }): LeaseClient {
  const c = new LeaseClient({ servers: [addr], tls, callTimeoutMs: 5000 });
  clients.push(c);
  return c;
}

const attrs = { type: "vxlan", vni: 1, vtepMac: "0e:00:00:00:00:01" } as const;

beforeAll(async () => {
  dir = tempDir("weft-agent-identity-");
  pki = await writeServerPki(dir.path);
});
afterEach(async () => {
  for (const s of stops.splice(0)) s.abort();
  for (const c of clients.splice(0)) c.close();
  await Promise.all(servers.splice(0).map((s) => s.close()));
});
afterAll(() => dir.cleanup());

describe("NodeIdentity", () => {
  it("joins with a token, keeps key and certificate 0600 in the state dir, and the lease server takes it for the node", async () => {
    const s = await server();
    const { token } = await s.tokens.create(HOUR, 1);
    const stateDir = join(dir.path, "join");
    const { id, lines } = identity({ servers: [s.addr], stateDir, token });
    await id.ensure(signal());
    for (const f of ["node.crt", "node.key"]) expect(statSync(join(stateDir, f)).mode & 0o777, f).toBe(0o600);
    expect(new X509Certificate(readFileSync(join(stateDir, "node.crt"))).subject).toBe("CN=node-a");
    expect(lines.some((l) => l.msg === "node certificate issued" && l.via === "join token")).toBe(true);
    const lease = await leaseClient(s.addr, id.tls).acquire({ nodeName: "node-a", publicIP: "198.18.0.1", attrs });
    expect(lease.nodeName).toBe("node-a");
  });

  it("uses the certificate it has after a restart: no token needed, none spent", async () => {
    const s = await server();
    const { token, record } = await s.tokens.create(HOUR, 2);
    const stateDir = join(dir.path, "restart");
    await identity({ servers: [s.addr], stateDir, token }).id.ensure(signal());
    const before = readFileSync(join(stateDir, "node.crt"), "utf8");
    const again = identity({ servers: [s.addr], stateDir });
    await again.id.ensure(signal());
    expect(readFileSync(join(stateDir, "node.crt"), "utf8")).toBe(before);
    expect(again.lines.some((l) => l.msg === "using the node certificate from the state dir")).toBe(true);
    expect((await s.tokens.list()).find((t) => t.id === record.id)!.usesLeft).toBe(1);
  });

  it("renews at 2/3 of the lifetime with its certificate and no token, each time with a new key", async () => {
    const s = await server();
    const { token } = await s.tokens.create(HOUR, 1);
    const stateDir = join(dir.path, "renew");
    let offset = 0;
    const { id, lines } = identity({ servers: [s.addr], stateDir, token, now: () => Date.now() + offset });
    await id.ensure(signal());
    const first = { cert: readFileSync(join(stateDir, "node.crt"), "utf8"), key: readFileSync(join(stateDir, "node.key"), "utf8") };
    let renewed = 0;
    const early = new AbortController();
    const sleeping = id.runRenewal(early.signal, () => renewed++);
    await new Promise((r) => setTimeout(r, 300));
    expect(renewed).toBe(0);
    early.abort();
    await sleeping;
    offset = 21 * DAY; // past 2/3 of the default 30 days
    void id.runRenewal(signal(), () => renewed++);
    await waitFor(() => renewed > 0, "a renewal", 10_000);
    offset = 0; // (the fake clock would make every new certificate due at once)
    const second = { cert: readFileSync(join(stateDir, "node.crt"), "utf8"), key: readFileSync(join(stateDir, "node.key"), "utf8") };
    expect(second.cert).not.toBe(first.cert);
    expect(second.key).not.toBe(first.key);
    expect(new X509Certificate(second.cert).checkPrivateKey((await import("node:crypto")).createPrivateKey(second.key))).toBe(true);
    expect(lines.some((l) => l.msg === "node certificate issued" && l.via === "renewal")).toBe(true);
    // The token had one use, spent on joining: the renewal did without it.
    expect((await s.tokens.list())[0]!.usesLeft).toBe(0);
  });

  it("fails for good with the server's reason when the token is used up or expired, and writes nothing", async () => {
    const s = await server();
    const { token } = await s.tokens.create(HOUR, 1);
    await identity({ servers: [s.addr], stateDir: join(dir.path, "first"), token }).id.ensure(signal());
    const stateDir = join(dir.path, "second");
    const err = await identity({ servers: [s.addr], nodeName: "node-b", stateDir, token }).id.ensure(signal()).catch((e: Error) => e);
    expect(err).toMatchObject({ code: "PERMISSION_DENIED" });
    expect((err as Error).message).toMatch(new RegExp(`lease server ${s.addr} refused the node certificate: join token ${token.slice(0, 6)} is used up .*POST /v1/join-tokens`));
    expect(existsSync(join(stateDir, "node.crt"))).toBe(false);
    expect(existsSync(join(stateDir, "node.key"))).toBe(false);
  });

  it("retries an unreachable server on the next address, and gives up only when stopped", async () => {
    const s = await server();
    const dead = await server();
    await servers.pop()!.close();
    const { token } = await s.tokens.create(HOUR, 1);
    const { id, lines } = identity({ servers: [dead.addr, s.addr], stateDir: join(dir.path, "failover"), token });
    await id.ensure(signal());
    expect(lines.some((l) => l.msg === "lease server unreachable for the node certificate; retrying" && l.server === dead.addr)).toBe(true);

    const stop = new AbortController();
    const pending = identity({ servers: [dead.addr], stateDir: join(dir.path, "never"), token: "abcdef.0123456789abcdef" }).id.ensure(stop.signal).catch((e: Error) => e);
    await new Promise((r) => setTimeout(r, 1500));
    stop.abort();
    expect(await pending).toMatchObject({ code: "SERVER_UNAVAILABLE" });
  });

  it("without a certificate and without a token says what to do", async () => {
    const err = await identity({ servers: ["127.0.0.1:1"], stateDir: join(dir.path, "empty") }).id.ensure(signal()).catch((e: Error) => e);
    expect(err).toMatchObject({ code: "CONFIG_INVALID" });
    expect((err as Error).message).toMatch(/no usable node certificate \(no .*node\.crt\) and no join token to get one; put a new token/);
  });
});

describe("identity files", () => {
  it("finish a renewal cut short between the certificate and the key", async () => {
    const s = await server();
    const { token } = await s.tokens.create(HOUR, 1);
    const a = join(dir.path, "files-a");
    await identity({ servers: [s.addr], stateDir: a, token }).id.ensure(signal());
    // As a crash leaves it: the new certificate in place, its key still in node.key.next, the old key in node.key.
    const c = join(dir.path, "files-c");
    mkdirSync(c);
    writeFileSync(join(c, "node.crt"), readFileSync(join(a, "node.crt")));
    writeFileSync(join(c, "node.key.next"), readFileSync(join(a, "node.key")));
    writeFileSync(join(c, "node.key"), "-----BEGIN PRIVATE KEY-----\nold\n-----END PRIVATE KEY-----\n");
    const found = readNodeCertificate(c, "node-a", Date.now());
    expect(found.ok).toBe(true);
    expect(existsSync(join(c, "node.key.next"))).toBe(false);
    expect(readFileSync(join(c, "node.key"))).toEqual(readFileSync(join(a, "node.key")));
  });

  it("refuse a certificate for another node, a key that does not match, an expired one", async () => {
    const s = await server();
    const { token } = await s.tokens.create(HOUR, 1);
    const d = join(dir.path, "files-d");
    await identity({ servers: [s.addr], stateDir: d, token }).id.ensure(signal());
    expect(readNodeCertificate(d, "node-x", Date.now())).toEqual({ ok: false, reason: expect.stringMatching(/is for CN=node-a, not node node-x/) });
    expect(readNodeCertificate(d, "node-a", Date.now() + 31 * DAY)).toEqual({ ok: false, reason: expect.stringMatching(/expired at/) });
    renameSync(join(d, "node.key"), join(d, "node.key.moved"));
    expect(readNodeCertificate(d, "node-a", Date.now())).toEqual({ ok: false, reason: expect.stringMatching(/node\.key is missing or does not belong/) });
    await writeNodeCertificate(d, readFileSync(join(d, "node.key.moved"), "utf8"), readFileSync(join(d, "node.crt"), "utf8"));
    expect(readNodeCertificate(d, "node-a", Date.now()).ok).toBe(true);
  });
});

describe("LeaseClient.reloadCredentials", () => {
  it("moves new calls to the renewed certificate while a running watch goes on", async () => {
    const s = await server();
    const { token } = await s.tokens.create(HOUR, 1);
    const stateDir = join(dir.path, "reload");
    let offset = 0;
    const { id } = identity({ servers: [s.addr], stateDir, token, now: () => Date.now() + offset });
    await id.ensure(signal());
    const c = leaseClient(s.addr, id.tls);
    await c.acquire({ nodeName: "node-a", publicIP: "198.18.0.1", attrs });
    const seen: WatchMessage[] = [];
    const stop = signal();
    const watching = (async () => { for await (const m of c.watch(0, stop)) seen.push(m); })().catch((e: Error) => e);
    await waitFor(() => seen.some((m) => m.kind === "complete"), "the watch snapshot");

    offset = 21 * DAY;
    const renewal = signal();
    let reloads = 0;
    void id.runRenewal(renewal, () => { c.reloadCredentials(id.tls); reloads++; });
    await waitFor(() => reloads > 0, "a renewal");
    offset = 0;
    // A new call on the new channel, with the new certificate; the old watch stream sees its effect.
    const lease = await c.renew("node-a", (await c.acquire({ nodeName: "node-a", publicIP: "198.18.0.1", attrs })).subnet);
    expect(lease.nodeName).toBe("node-a");
    await waitFor(() => seen.some((m) => m.kind === "events"), "an event on the watch opened before the reload");
    expect(await Promise.race([watching, new Promise((r) => setTimeout(() => r("still running"), 100))])).toBe("still running");
  });
});

describe("agent flags", () => {
  const base = ["--server", "198.18.0.254:7600", "--node-name", "node-a"];
  const tokenFile = (text: string) => {
    const f = join(dir.path, `token-${++n}`);
    writeFileSync(f, text, { mode: 0o600 });
    return f;
  };
  const error = (argv: string[]) => { try { loadAgentConfig([...base, ...argv]); } catch (e) { return (e as Error).message; } return undefined; };

  it("take --join-token-file with --tls-ca, and read the token at start", () => {
    const f = tokenFile("abcdef.0123456789abcdef\n");
    const cfg = loadAgentConfig([...base, "--tls-ca", pki.file("server-ca.crt"), "--join-token-file", f, "--state-dir", join(dir.path, "flags")]);
    expect(cfg).toMatchObject({ join: { file: f, token: "abcdef.0123456789abcdef" }, tls: { ca: pki.file("server-ca.crt") } });
  });

  it.each([
    [() => ["--join-token-file", tokenFile("abcdef.0123456789abcdef")], /--join-token-file needs --tls-ca/],
    [() => ["--insecure", "--join-token-file", tokenFile("abcdef.0123456789abcdef")], /--join-token-file conflicts with --insecure/],
    [() => ["--tls-ca", pki.file("server-ca.crt"), "--tls-cert", pki.file("server.crt"), "--tls-key", pki.file("server.key"), "--join-token-file", tokenFile("abcdef.0123456789abcdef")], /--join-token-file conflicts with --tls-cert\/--tls-key/],
    [() => ["--tls-ca", pki.file("server-ca.crt"), "--join-token-file", tokenFile("not a token")], /--join-token-file: .* does not hold a join token/],
    [() => ["--tls-ca", pki.file("server-ca.crt"), "--join-token-file", join(dir.path, "absent"), "--state-dir", join(dir.path, "nothing")], /--join-token-file: cannot read .*absent \(ENOENT\)/],
  ])("refuse bad combinations and files (%#)", (argv, re) => {
    expect(error(argv())).toMatch(re);
  });

  it("accept a missing token file once the state dir has a certificate from an earlier join", () => {
    const d = join(dir.path, "joined");
    mkdirSync(d);
    writeFileSync(join(d, "node.crt"), "x");
    const cfg = loadAgentConfig([...base, "--tls-ca", pki.file("server-ca.crt"), "--join-token-file", join(dir.path, "gone"), "--state-dir", d]);
    expect(cfg).toMatchObject({ join: { file: join(dir.path, "gone") } });
    expect((cfg as { join: { token?: string } }).join.token).toBeUndefined();
  });
});
