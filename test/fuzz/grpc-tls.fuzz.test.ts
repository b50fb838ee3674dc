// The gRPC API under TLS, fuzzed: NodeIdentityService.IssueCertificate with
// real and damaged join tokens and certificate requests (for the asked name,
// for another name, garbage), next to every LeaseService message, from a
// client without a certificate and from one with node-1's hand-made mTLS
// certificate. Besides the plaintext test's properties (documented statuses
// in time, server serving, store consistent), every certificate issued is for
// exactly the node name asked, and a lease call never acts for a node the
// client's certificate does not name.
import "reflect-metadata";
import { X509Certificate } from "node:crypto";
import { chmodSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as x509 from "@peculiar/x509";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import fc from "fast-check";
import { IssueCertificateRequest, IssueCertificateResponse } from "../../gen/weft/v1/lease.js";
import { loadServerConfig } from "../../lease-server/src/config.js";
import { startLeaseServer, type RunningServer } from "../../lease-server/src/server.js";
import { memoryLogger, tempDir } from "../../lease-server/test/helpers.js";
import { csrFor, writeServerPki } from "../../lease-server/test/identity-pki.js";
import { FUZZ_TIMEOUT_MS, fuzzParams, inputCounter, mutate, nastyString } from "./fuzz.js";
import { DOCUMENTED, NAMES, checkStore, damaged, messageCall, rawBytes, unary, watch, type Call } from "./grpc-messages.js";

const S = grpc.status;
const ADMIN = "fuzz-admin-token-0123456789abcdefghijklmnopqrstuv";
const dir = tempDir("weft-fuzz-grpc-tls-");
const { log, lines } = memoryLogger();
let server: RunningServer;
let anonymous: grpc.Client;
let node1: grpc.Client;
const tokens: string[] = [];
const csrs = new Map<string, string>();

beforeAll(async () => {
  const pki = await writeServerPki(dir.path);
  const netconf = join(dir.path, "net-conf.json");
  writeFileSync(netconf, '{"Network": "10.244.0.0/20", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}');
  const adminFile = join(dir.path, "admin.token");
  writeFileSync(adminFile, ADMIN);
  chmodSync(adminFile, 0o600);
  const cfg = loadServerConfig(["--store", `sqlite:${join(dir.path, "leases.db")}`, "--network-config", netconf, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
    "--tls-cert", pki.file("server.crt"), "--tls-key", pki.file("server.key"), "--tls-client-ca", pki.file("hand-ca.crt"), "--state-dir", join(dir.path, "state"),
    "--admin-token-file", adminFile, "--log-level", "silent"])!;
  server = await startLeaseServer(cfg, { log });
  const serverCa = readFileSync(pki.file("server-ca.crt"));
  const addr = `127.0.0.1:${server.grpcPort}`;
  anonymous = new grpc.Client(addr, grpc.credentials.createSsl(serverCa));
  const own = await pki.handCa.leaf("node-1", [{ type: "dns", value: "node-1" }], x509.ExtendedKeyUsage.clientAuth);
  node1 = new grpc.Client(addr, grpc.credentials.createSsl(serverCa, Buffer.from(own.key), Buffer.from(own.cert)));
  for (const uses of [1000, 1000, 1]) {
    const r = await server.http.inject({ method: "POST", url: "/v1/join-tokens", headers: { authorization: `Bearer ${ADMIN}` }, payload: { ttl: "1h", uses } });
    expect(r.statusCode).toBe(201);
    tokens.push((r.json() as { token: string }).token);
  }
  for (const name of [...NAMES.slice(0, 6), "other-node"]) csrs.set(name, (await csrFor(name)).csr);
}, FUZZ_TIMEOUT_MS);
afterAll(async () => {
  anonymous?.close();
  node1?.close();
  await server?.close();
  dir.cleanup();
});

/** IssueCertificate with real tokens and CSRs often enough to reach the signing code. */
function issueCall(): fc.Arbitrary<Call & { nodeName: string }> {
  const names = [...csrs.keys()];
  const name = fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...names) }, { weight: 1, arbitrary: nastyString() });
  const csr = (asked: string) => fc.oneof(
    { weight: 4, arbitrary: fc.constant(csrs.get(asked) ?? csrs.get("other-node")!) },
    { weight: 1, arbitrary: fc.constantFrom(...csrs.values()) },
    { weight: 1, arbitrary: fc.constantFrom(...csrs.values()).chain(mutate) },
    { weight: 1, arbitrary: nastyString(["-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"]) },
  );
  const token = fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...tokens) }, { weight: 1, arbitrary: fc.constantFrom(...tokens).chain(mutate) }, { weight: 1, arbitrary: nastyString(["", "abcdef.0123456789abcdef"]) });
  return name.chain((nodeName) => fc.record({ csrPem: csr(nodeName), joinToken: token }).map((r) => ({
    path: "/weft.v1.NodeIdentityService/IssueCertificate", nodeName, encode: () => IssueCertificateRequest.encode({ nodeName, ...r }).finish(),
  })));
}

describe("gRPC API under TLS (fuzz)", () => {
  const inputs = inputCounter("gRPC (TLS, identity)");

  it("documented statuses in time, certificates only for the name asked, leases only for the certificate's node", async () => {
    let issued = 0;
    const call = fc.oneof({ weight: 3, arbitrary: issueCall() }, { weight: 3, arbitrary: messageCall }, { weight: 1, arbitrary: damaged }, { weight: 1, arbitrary: rawBytes });
    await fc.assert(fc.asyncProperty(fc.array(fc.tuple(call, fc.boolean()), { minLength: 1, maxLength: 5 }), async (calls) => {
      inputs.add(calls.length);
      const results = await Promise.all(calls.map(async ([c, asNode1]) => {
        const client = asNode1 ? node1 : anonymous;
        const body = Buffer.from(c.encode());
        return { c, asNode1, body, r: await (c.stream ? watch(client, body) : unary(client, c.path, body)) };
      }));
      for (const { c, asNode1, body, r } of results) {
        const where = `${asNode1 ? "node-1" : "anonymous"} ${c.path} ${body.toString("hex").slice(0, 120)} -> ${S[r.code]} ${r.details}`;
        expect(DOCUMENTED.has(r.code), where).toBe(true);
        if (r.code !== S.OK || !c.path.endsWith("/IssueCertificate") || !r.body) continue;
        const asked = IssueCertificateRequest.decode(body).nodeName;
        const cert = new X509Certificate(IssueCertificateResponse.decode(r.body).certificatePem);
        expect(cert.subject, where).toBe(`CN=${asked}`);
        expect(cert.subjectAltName, where).toBe(`DNS:${asked}`);
        issued++;
      }
      expect((await unary(node1, "/weft.v1.LeaseService/GetNetworkConfig", Buffer.alloc(0))).code).toBe(S.OK);
      await checkStore(server);
      // Only node-1's certificate can act on leases here, so no other node may hold one.
      const { leases } = await server.store.listLeases();
      expect(leases.every((l) => l.nodeName === "node-1"), JSON.stringify(leases.map((l) => l.nodeName))).toBe(true);
    }), fuzzParams(150));
    expect(issued).toBeGreaterThan(0);
    expect(lines.filter((l) => /unexpected error/.test(String(l.msg)))).toEqual([]);
  }, FUZZ_TIMEOUT_MS);
});
