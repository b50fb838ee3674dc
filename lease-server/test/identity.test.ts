// Node identity on a real in-process lease server (TLS on 127.0.0.1, a real
// SQLite file): join tokens traded for client certificates, renewal with the
// certificate, and the LeaseService accepting only verified certificates.
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { X509Certificate } from "node:crypto";
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { LeaseServiceClient, NodeIdentityServiceClient, type IssueCertificateResponse } from "../../gen/weft/v1/lease.js";
import { loadServerConfig } from "../src/config.js";
import { startLeaseServer, type RunningServer } from "../src/server.js";
import { SqliteLeaseStore } from "../src/store/sqlite-lease-store.js";
import { JoinTokens } from "../src/identity/join-tokens.js";
import { SqliteJoinTokenStore } from "../src/identity/sqlite-join-token-store.js";
import { memoryLogger, tempDir } from "./helpers.js";
import { csrFor, keyPem, selfSigned, writeServerPki, type ServerPki } from "./identity-pki.js";
import { vxlanReq, writeNetConf } from "./server-process.js";

const MINUTE = 60_000;

interface Harness {
  readonly server: RunningServer;
  readonly tokens: JoinTokens;
  readonly clock: { t: number; now(): number };
  readonly logs: Record<string, unknown>[];
  readonly stateDir: string;
}

let dir: ReturnType<typeof tempDir>;
let pki: ServerPki;
let serverCa: Buffer;
const open: Array<{ close(): void }> = [];
const servers: RunningServer[] = [];

let serial = 0;
/** A server on TLS with its own SQLite file and state dir (`name` again: the same ones, a restart). */
async function startServer(extra: string[] = [], name = `s${++serial}`): Promise<Harness> {
  const stateDir = join(dir.path, `${name}-state`);
  const cfg = loadServerConfig([
    "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--store", `sqlite:${join(dir.path, `${name}.db`)}`, "--network-config", writeNetConf(dir.path),
    "--tls-cert", pki.file("server.crt"), "--tls-key", pki.file("server.key"), "--tls-client-ca", pki.file("hand-ca.crt"), "--state-dir", stateDir, ...extra,
  ])!;
  const clock = { t: Date.now(), now() { return this.t; } };
  const store = new SqliteLeaseStore(join(dir.path, `${name}.db`));
  const { log, lines } = memoryLogger();
  const server = await startLeaseServer(cfg, { store, clock, log });
  servers.push(server);
  return { server, tokens: new JoinTokens(new SqliteJoinTokenStore(store.database), clock), clock, logs: lines, stateDir };
}

function creds(cert?: { cert: string; key: string }): grpc.ChannelCredentials {
  return cert ? grpc.credentials.createSsl(serverCa, Buffer.from(cert.key), Buffer.from(cert.cert)) : grpc.credentials.createSsl(serverCa);
}

function identityClient(h: Harness, cert?: { cert: string; key: string }) {
  const c = new NodeIdentityServiceClient(`127.0.0.1:${h.server.grpcPort}`, creds(cert));
  open.push(c);
  return (req: { nodeName: string; csrPem: string; joinToken?: string }) => new Promise<IssueCertificateResponse>((resolve, reject) =>
    c.issueCertificate({ joinToken: "", ...req }, new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (e, r) => (e ? reject(e) : resolve(r))));
}

function leaseClient(h: Harness, cert?: { cert: string; key: string }) {
  const c = new LeaseServiceClient(`127.0.0.1:${h.server.grpcPort}`, creds(cert));
  open.push(c);
  return c;
}

const acquire = (c: LeaseServiceClient, n: number, nodeName: string) => new Promise<{ nodeName: string; subnet: string }>((resolve, reject) =>
  c.acquireLease({ previousSubnet: "", instanceId: "", ...vxlanReq(n, nodeName) }, new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (e, r) => (e ? reject(e) : resolve(r))));

const failure = (p: Promise<unknown>) => p.then(() => { throw new Error("expected the call to fail"); }, (e: grpc.ServiceError) => e);

/** Joins `nodeName` with `token`: the issued certificate and key, as an agent would keep them. */
async function join_(h: Harness, nodeName: string, token: string): Promise<{ cert: string; key: string; res: IssueCertificateResponse }> {
  const { csr, keys } = await csrFor(nodeName);
  const res = await identityClient(h)({ nodeName, csrPem: csr, joinToken: token });
  return { cert: res.certificatePem, key: await keyPem(keys.privateKey), res };
}

beforeAll(async () => {
  dir = tempDir("weft-identity-");
  pki = await writeServerPki(dir.path);
  serverCa = readFileSync(pki.file("server-ca.crt"));
});
afterEach(async () => {
  for (const c of open.splice(0)) c.close();
  await Promise.all(servers.splice(0).map((s) => s.close()));
});
afterAll(() => dir.cleanup());

describe("join tokens over gRPC", () => {
  it("trade a token for a client certificate for exactly the node name, which the LeaseService then accepts", async () => {
    const h = await startServer();
    const { token } = await h.tokens.create(10 * MINUTE, 1);
    const node = await join_(h, "node-a", token);
    const cert = new X509Certificate(node.cert);
    expect(cert.subject).toBe("CN=node-a");
    expect(cert.subjectAltName).toBe("DNS:node-a");
    expect(cert.keyUsage).toEqual(["1.3.6.1.5.5.7.3.2"]); // clientAuth only
    expect(cert.ca).toBe(false);
    expect(cert.verify(new X509Certificate(node.res.caPem).publicKey)).toBe(true);
    expect(node.res.notAfter!.getTime()).toBe(Date.parse(cert.validTo));
    expect(Date.parse(cert.validTo) - h.clock.now()).toBeGreaterThan(29 * 86_400_000); // --node-cert-validity default 30d

    const lc = leaseClient(h, node);
    expect((await acquire(lc, 1, "node-a")).nodeName).toBe("node-a");
    const other = await failure(acquire(lc, 2, "node-b"));
    expect(other.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(other.details).toMatch(/certificate is for node-a, not node "node-b"/);

    // Status reports are bound to the certificate's node the same way.
    const report = (nodeName: string) => new Promise<grpc.ServiceError | null>((resolve) => {
      const call = lc.reportStatus((e) => resolve(e));
      call.on("error", () => {});
      call.write({ nodeName, appliedRevision: 0, healthy: true, problems: [], backend: "vxlan", version: "test", peers: 0, subnet: "" });
      if (nodeName === "node-a") setTimeout(() => call.end(), 200);
    });
    const forged = await report("node-b");
    expect(forged?.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(forged?.details).toMatch(/certificate is for node-a, not node "node-b"/);
    expect(await report("node-a")).toBeNull();
    expect(h.server.fleet.nodes().nodes.find((n) => n.nodeName === "node-b")).toBeUndefined();
  });

  it("refuses a single-use token the second time, an expired token and an unknown one, saying which and what to do", async () => {
    const h = await startServer();
    const once = await h.tokens.create(10 * MINUTE, 1);
    await join_(h, "node-a", once.token);
    const again = await failure(join_(h, "node-b", once.token));
    expect(again.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(again.details).toMatch(new RegExp(`join token ${once.record.id} is used up \\(all 1 use taken\\); make a new one with POST /v1/join-tokens`));

    const short = await h.tokens.create(MINUTE, 5);
    h.clock.t += MINUTE + 1;
    const expired = await failure(join_(h, "node-c", short.token));
    expect(expired.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(expired.details).toContain(`join token ${short.record.id} expired at ${new Date(short.record.expiresAt).toISOString()}; make a new one with POST /v1/join-tokens`);

    const unknown = await failure(join_(h, "node-d", "abcdef.0123456789abcdef"));
    expect(unknown.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(unknown.details).toMatch(/join token abcdef is unknown/);
    const good = await h.tokens.create(10 * MINUTE, 5);
    const wrongSecret = await failure(join_(h, "node-d", `${good.record.id}.${"x".repeat(16)}`));
    expect(wrongSecret.details).toMatch(new RegExp(`join token ${good.record.id} is unknown`));
    expect((await h.tokens.list()).find((t) => t.id === good.record.id)?.usesLeft).toBe(5);
    const refusals = h.logs.filter((l) => l.msg === "refused certificate request");
    expect(refusals.length).toBe(4);
  });

  it("gives a multi-use token exactly its uses, also to concurrent requests", async () => {
    const h = await startServer();
    const { token, record } = await h.tokens.create(10 * MINUTE, 3);
    const results = await Promise.allSettled(Array.from({ length: 6 }, (_, i) => join_(h, `node-${i}`, token)));
    expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(3);
    for (const r of results.filter((r) => r.status === "rejected")) expect((r as PromiseRejectedResult).reason.details).toMatch(/is used up \(all 3 uses taken\)/);
    expect((await h.tokens.list()).find((t) => t.id === record.id)?.usesLeft).toBe(0);
  });

  it("checks the certificate request: bad PEM, a CSR for another name, a forged signature, a weak key", async () => {
    const h = await startServer();
    const { token, record } = await h.tokens.create(10 * MINUTE, 1);
    const issue = identityClient(h);
    const garbage = await failure(issue({ nodeName: "node-a", csrPem: "-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n", joinToken: token }));
    expect(garbage.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(garbage.details).toMatch(/^csr_pem: does not parse/);
    const other = await failure(issue({ nodeName: "node-a", csrPem: (await csrFor("node-b")).csr, joinToken: token }));
    expect(other.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(other.details).toMatch(/^csr_pem: its subject is "CN=node-b", not CN=node-a/);
    // A request signed by another key than the one it carries.
    const real = new x509.Pkcs10CertificateRequest((await csrFor("node-a")).csr);
    const forged = new x509.Pkcs10CertificateRequest((await csrFor("node-a")).csr);
    const mixed = Buffer.from(forged.rawData);
    const realKey = Buffer.from(real.publicKey.rawData);
    const at = mixed.indexOf(Buffer.from(forged.publicKey.rawData));
    realKey.copy(mixed, at);
    const forgedPem = `-----BEGIN CERTIFICATE REQUEST-----\n${mixed.toString("base64")}\n-----END CERTIFICATE REQUEST-----\n`;
    const bad = await failure(issue({ nodeName: "node-a", csrPem: forgedPem, joinToken: token }));
    expect(bad.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(bad.details).toMatch(/^csr_pem: its signature does not verify/);
    const rsa = await webcrypto().subtle.generateKey({ name: "RSASSA-PKCS1-v1_5", modulusLength: 1024, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" }, true, ["sign", "verify"]) as CryptoKeyPair;
    const weak = await x509.Pkcs10CertificateRequestGenerator.create({ name: "CN=node-a", keys: rsa, signingAlgorithm: { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" } });
    const weakErr = await failure(issue({ nodeName: "node-a", csrPem: weak.toString("pem"), joinToken: token }));
    expect(weakErr.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(weakErr.details).toMatch(/its key \(rsa 1024 bit\) is not accepted/);
    // None of these spent the single use.
    expect((await h.tokens.list()).find((t) => t.id === record.id)?.usesLeft).toBe(1);
  });

  it("does not give a token the name of a node that holds a live lease, and spends no use on it", async () => {
    const h = await startServer();
    const first = await h.tokens.create(10 * MINUTE, 1);
    const a = await join_(h, "node-a", first.token);
    const lease = await acquire(leaseClient(h, a), 1, "node-a");
    const second = await h.tokens.create(10 * MINUTE, 1);
    const taken = await failure(join_(h, "node-a", second.token));
    expect(taken.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(taken.details).toMatch(new RegExp(`node "node-a" is held by a live node \\(lease ${lease.subnet.replace(".", "\\.")} until .*\\); a join token cannot take over a live node's name`));
    expect((await h.tokens.list()).find((t) => t.id === second.record.id)?.usesLeft).toBe(1);
    // Once the lease is gone, the name is free again.
    await h.server.manager.revoke(lease.subnet);
    expect(new X509Certificate((await join_(h, "node-a", second.token)).cert).subject).toBe("CN=node-a");
  });
});

describe("renewal", () => {
  it("renews with the node's own certificate and no token, also while its lease is live", async () => {
    const h = await startServer();
    const { token } = await h.tokens.create(10 * MINUTE, 1);
    const a = await join_(h, "node-a", token);
    await acquire(leaseClient(h, a), 1, "node-a");
    h.clock.t += 10 * 86_400_000;
    const { csr } = await csrFor("node-a");
    const renewed = await identityClient(h, a)({ nodeName: "node-a", csrPem: csr });
    const cert = new X509Certificate(renewed.certificatePem);
    expect(cert.subject).toBe("CN=node-a");
    expect(Date.parse(cert.validTo)).toBeGreaterThan(Date.parse(new X509Certificate(a.cert).validTo));
    expect(h.logs.some((l) => l.msg === "issued node certificate" && l.via === "renewal")).toBe(true);
  });

  it("refuses a renewal without a certificate, with another node's certificate, or with an unverified one", async () => {
    const h = await startServer();
    const { token } = await h.tokens.create(10 * MINUTE, 2);
    const a = await join_(h, "node-a", token);
    const { csr } = await csrFor("node-b");
    const none = await failure(identityClient(h)({ nodeName: "node-b", csrPem: csr }));
    expect(none.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(none.details).toMatch(/no join token and no verified client certificate for node "node-b"/);
    const foreign = await failure(identityClient(h, a)({ nodeName: "node-b", csrPem: csr }));
    expect(foreign.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(foreign.details).toMatch(/renewing needs a certificate for node "node-b"; this one is for node-a/);
    const forged = await failure(identityClient(h, await selfSigned("node-b"))({ nodeName: "node-b", csrPem: csr }));
    expect(forged.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(forged.details).toMatch(/no verified client certificate/);
  });
});

describe("the LeaseService with TLS", () => {
  it("refuses every call without a verified client certificate, naming both ways to get one", async () => {
    const h = await startServer();
    const anon = leaseClient(h);
    const cfg = await failure(new Promise((resolve, reject) => anon.getNetworkConfig({}, (e, r) => (e ? reject(e) : resolve(r)))));
    expect(cfg.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(cfg.details).toMatch(/start the agent with --join-token-file .* or --tls-cert\/--tls-key/);
    expect((await failure(acquire(anon, 1, "node-a"))).code).toBe(grpc.status.PERMISSION_DENIED);
    const watchErr = await new Promise<grpc.ServiceError>((resolve) => anon.watchLeases({ fromRevision: 0, storeId: "" }).on("error", resolve));
    expect(watchErr.code).toBe(grpc.status.PERMISSION_DENIED);
  });

  it("takes a self-signed certificate for no one, though it names the node", async () => {
    const h = await startServer();
    const err = await failure(acquire(leaseClient(h, await selfSigned("node-a")), 1, "node-a"));
    expect(err.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(err.details).toMatch(/needs a verified client certificate/);
  });

  it("keeps accepting hand-made certificates signed by --tls-client-ca", async () => {
    const h = await startServer();
    const hand = await pki.handCa.leaf("node-h", [{ type: "dns", value: "node-h" }], x509.ExtendedKeyUsage.clientAuth);
    expect((await acquire(leaseClient(h, hand), 1, "node-h")).nodeName).toBe("node-h");
  });
});

describe("REST: /v1/join-tokens", () => {
  const ADMIN = "t".repeat(40);
  const adminArgs = () => {
    const f = join(dir.path, "admin-token");
    writeFileSync(f, ADMIN, { mode: 0o600 });
    return ["--admin-token-file", f];
  };
  const rest = async (h: Harness, method: string, path: string, body?: unknown, auth = true) => {
    const r = await fetch(`http://127.0.0.1:${h.server.httpPort}${path}`, {
      method, headers: { ...(auth ? { authorization: `Bearer ${ADMIN}` } : {}), ...(body !== undefined ? { "content-type": "application/json" } : {}) },
      body: body !== undefined ? JSON.stringify(body) : undefined,
    });
    const text = await r.text();
    return { status: r.status, text, json: text ? JSON.parse(text) as Record<string, unknown> : undefined };
  };

  it("makes a token shown once, lists it without its secret, counts its uses and deletes it", async () => {
    const h = await startServer(adminArgs());
    const made = await rest(h, "POST", "/v1/join-tokens", { ttl: "1h", uses: 10 });
    expect(made.status).toBe(201);
    const token = made.json!.token as string;
    expect(token).toMatch(/^[a-z0-9]{6}\.[a-z0-9]{16}$/);
    expect(made.json).toMatchObject({ id: token.slice(0, 6), uses: 10, expiresAt: new Date(h.clock.now() + 3_600_000).toISOString() });
    // Only the hash is stored.
    const files = readdirSync(dir.path).filter((f) => f.startsWith(`s${serial}.db`));
    expect(files).toContain(`s${serial}.db-wal`);
    for (const f of files) expect(readFileSync(join(dir.path, f)).includes(Buffer.from(token.slice(7))), f).toBe(false);
    expect(Buffer.concat(files.map((f) => readFileSync(join(dir.path, f)))).includes(Buffer.from(token.slice(0, 6)))).toBe(true);

    await join_(h, "node-a", token);
    const listed = await rest(h, "GET", "/v1/join-tokens");
    expect(listed.status).toBe(200);
    expect(listed.json).toEqual([{ id: token.slice(0, 6), uses: 10, usesLeft: 9, expiresAt: made.json!.expiresAt, createdAt: new Date(h.clock.now()).toISOString() }]);
    expect(listed.text).not.toContain(token.slice(7));

    expect((await rest(h, "DELETE", `/v1/join-tokens/${token.slice(0, 6)}`)).status).toBe(204);
    expect((await failure(join_(h, "node-b", token))).details).toMatch(/is unknown/);
    const again = await rest(h, "DELETE", `/v1/join-tokens/${token.slice(0, 6)}`);
    expect(again.status).toBe(404);
    expect(again.json!.code).toBe("NOT_FOUND");
  });

  it.each([
    [{ ttl: "30s" }, /ttl: "30s" is not a duration from 1m to 30d/],
    [{ ttl: "31d" }, /ttl: "31d" is not a duration from 1m to 30d/],
    [{ ttl: "soon" }, /ttl: "soon" is not a duration/],
    [{ uses: 0 }, /uses/],
    [{ uses: 10_001 }, /uses/],
    [{ uses: 1.5 }, /uses/],
    [{ ttl: "1h", extra: 1 }, /additional propert/],
  ])("refuses a bad body %j naming the field", async (body, re) => {
    const h = await startServer(adminArgs());
    const r = await rest(h, "POST", "/v1/join-tokens", body);
    expect(r.status).toBe(400);
    expect(r.json!.code).toBe("INVALID_ARGUMENT");
    expect(String(r.json!.detail)).toMatch(re);
    expect(await h.tokens.list()).toEqual([]);
  });

  it("needs admin credentials for every join-token route", async () => {
    const h = await startServer(adminArgs());
    for (const [method, path, body] of [["POST", "/v1/join-tokens", { ttl: "1h" }], ["GET", "/v1/join-tokens"], ["DELETE", "/v1/join-tokens/abcdef"]] as const) {
      const r = await rest(h, method, path, body, false);
      expect(r.status, `${method} ${path}`).toBe(401);
    }
    expect(await h.tokens.list()).toEqual([]);
  });

  it("says that join tokens need TLS on a server started with --insecure", async () => {
    const cfg = loadServerConfig(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--store", `sqlite:${join(dir.path, "insecure.db")}`, "--network-config", writeNetConf(dir.path), "--insecure", ...adminArgs()])!;
    const server = await startLeaseServer(cfg, { log: memoryLogger().log });
    servers.push(server);
    const r = await rest({ server } as Harness, "POST", "/v1/join-tokens", { ttl: "1h" });
    expect(r.status).toBe(400);
    expect(r.json).toMatchObject({ code: "FAILED_PRECONDITION", detail: expect.stringMatching(/join tokens need TLS on the gRPC port: start the lease server with --tls-cert\/--tls-key/) });
  });
});

describe("the node CA", () => {
  it("is made once in --state-dir (0600 files) and kept across restarts", async () => {
    const h = await startServer([], "ca1");
    const { token } = await h.tokens.create(10 * MINUTE, 2);
    const first = await join_(h, "node-a", token);
    for (const f of ["ca.crt", "ca.key"]) expect(statSync(join(h.stateDir, f)).mode & 0o777).toBe(0o600);
    expect(first.res.caPem.trim()).toBe(readFileSync(join(h.stateDir, "ca.crt"), "utf8").trim());
    await servers.pop()!.close();
    const h2 = await startServer([], "ca1");
    const second = await join_(h2, "node-b", token);
    expect(second.res.caPem).toBe(first.res.caPem);
    // The restarted server still trusts the certificate it issued before.
    expect((await acquire(leaseClient(h2, first), 1, "node-a")).nodeName).toBe("node-a");
  });

  it("uses --ca-cert/--ca-key when given, and refuses a key that is not the CA's", async () => {
    const other = await startServer([], "ca2");
    const caCert = join(other.stateDir, "ca.crt");
    const h = await startServer(["--ca-cert", caCert, "--ca-key", join(other.stateDir, "ca.key")], "ca3");
    const { token } = await h.tokens.create(10 * MINUTE, 1);
    expect((await join_(h, "node-a", token)).res.caPem.trim()).toBe(readFileSync(caCert, "utf8").trim());
    writeFileSync(join(dir.path, "wrong.key"), await keyPem((await csrFor("x")).keys.privateKey));
    const cfg = loadServerConfig(["--store", `sqlite:${join(dir.path, "ca4.db")}`, "--network-config", writeNetConf(dir.path), "--tls-cert", pki.file("server.crt"), "--tls-key", pki.file("server.key"),
      "--ca-cert", caCert, "--ca-key", join(dir.path, "wrong.key"), "--state-dir", join(dir.path, "ca4-state"), "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])!;
    await expect(startLeaseServer(cfg, { log: memoryLogger().log })).rejects.toThrow(/--ca-key .*wrong\.key does not belong to the CA certificate in --ca-cert/);
  });

  it("flags: --ca-cert and --ca-key go together and need TLS; --node-cert-validity is bounded", () => {
    const base = ["--store", `sqlite:${join(dir.path, "f.db")}`, "--network-config", writeNetConf(dir.path)];
    const tls = ["--tls-cert", pki.file("server.crt"), "--tls-key", pki.file("server.key")];
    expect(() => loadServerConfig([...base, ...tls, "--ca-cert", pki.file("hand-ca.crt")])).toThrow(/--ca-cert and --ca-key go together/);
    expect(() => loadServerConfig([...base, "--insecure", "--ca-cert", "x", "--ca-key", "y"])).toThrow(/--ca-cert\/--ca-key need TLS/);
    expect(() => loadServerConfig([...base, ...tls, "--node-cert-validity", "30s"])).toThrow(/--node-cert-validity: "30s" is not a duration from 1m to 365d/);
    expect(loadServerConfig([...base, ...tls, "--node-cert-validity", "7d"])!.identity.nodeCertValidityMs).toBe(7 * 86_400_000);
  });
});

function webcrypto(): Crypto {
  return globalThis.crypto;
}
