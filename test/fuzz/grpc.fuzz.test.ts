// The gRPC API, fuzzed against a real in-process lease server (SQLite file in
// a temp dir, plaintext gRPC on 127.0.0.1): every request message with
// arbitrary field values (any unicode, huge numbers, several oneof members,
// missing fields), valid encodings cut short, bit-flipped or padded with
// unknown fields, and arbitrary bytes. Each call ends in time with a status
// the API documents (never INTERNAL, UNKNOWN or a hang), the server keeps
// serving, and the store stays consistent: every lease a node subnet of the
// network, no subnet leased twice, no node holding two leases.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import fc from "fast-check";
import { loadServerConfig } from "../../lease-server/src/config.js";
import { startLeaseServer, type RunningServer } from "../../lease-server/src/server.js";
import { memoryLogger, tempDir } from "../../lease-server/test/helpers.js";
import { FUZZ_TIMEOUT_MS, fuzzParams, inputCounter } from "./fuzz.js";
import { DOCUMENTED, checkStore, damaged, messageCall, rawBytes, unary, watch } from "./grpc-messages.js";

const S = grpc.status;

const dir = tempDir("weft-fuzz-grpc-");
const { log, lines } = memoryLogger();
let server: RunningServer;
let client: grpc.Client;

beforeAll(async () => {
  const netconf = join(dir.path, "net-conf.json");
  // 15 subnets for 20 node names: acquisitions also run into a full network.
  writeFileSync(netconf, '{"Network": "10.244.0.0/20", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}');
  const cfg = loadServerConfig(["--insecure", "--store", `sqlite:${join(dir.path, "leases.db")}`, "--network-config", netconf, "--listen", "127.0.0.1:0",
    "--http-listen", "127.0.0.1:0", "--state-dir", dir.path, "--log-level", "silent"])!;
  server = await startLeaseServer(cfg, { log });
  client = new grpc.Client(`127.0.0.1:${server.grpcPort}`, grpc.credentials.createInsecure());
}, FUZZ_TIMEOUT_MS);
afterAll(async () => {
  client?.close();
  await server?.close();
  dir.cleanup();
});

describe("gRPC API (fuzz)", () => {
  const inputs = inputCounter("gRPC");

  it("every request ends in time with a documented status; the server keeps serving and the store stays consistent", async () => {
    const seen = new Map<number, number>();
    await fc.assert(fc.asyncProperty(fc.array(fc.oneof({ weight: 4, arbitrary: messageCall }, { weight: 2, arbitrary: damaged }, { weight: 1, arbitrary: rawBytes }), { minLength: 1, maxLength: 6 }), async (calls) => {
      inputs.add(calls.length);
      // Concurrently, as many agents would.
      const results = await Promise.all(calls.map(async (c) => {
        const body = Buffer.from(c.encode());
        return { c, body, r: await (c.stream ? watch(client, body) : unary(client, c.path, body)) };
      }));
      for (const { c, body, r } of results) {
        seen.set(r.code, (seen.get(r.code) ?? 0) + 1);
        // Without TLS the server may not offer the identity service at all.
        if (r.code === S.UNIMPLEMENTED && c.path.includes("NodeIdentityService")) continue;
        expect(DOCUMENTED.has(r.code), `${c.path} ${body.toString("hex").slice(0, 120)} -> ${S[r.code]} ${r.details}`).toBe(true);
      }
      expect((await unary(client, "/weft.v1.LeaseService/GetNetworkConfig", Buffer.alloc(0))).code).toBe(S.OK);
      await checkStore(server);
    }), fuzzParams(250));
    // The fuzz reaches the lease logic: some acquisitions succeed and some are refused on their content.
    expect(seen.get(S.OK) ?? 0).toBeGreaterThan(0);
    expect(seen.get(S.INVALID_ARGUMENT) ?? 0).toBeGreaterThan(0);
    expect(lines.filter((l) => /unexpected error/.test(String(l.msg)))).toEqual([]);
  }, FUZZ_TIMEOUT_MS);
});
