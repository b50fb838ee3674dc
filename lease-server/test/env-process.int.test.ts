// bin/weft-lease-server configured by WEFT_* variables alone, no argv: it
// listens where WEFT_LISTEN and WEFT_HTTP_LISTEN say, keeps its leases where
// WEFT_STORE says, and a bad variable is named in the error, with exit 2.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { WEFT_VERSION } from "../../lib/src/build-info.js";
import { tempDir, waitFor } from "./helpers.js";
import { BIN, connect, vxlanReq, writeNetConf } from "./server-process.js";

/** A port nothing listens on right now (the kernel's pick, released again). */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** Runs bin/weft-lease-server itself (its #! line, as systemd and containers do) with exactly `env`, no argv. */
function run(env: Record<string, string>) {
  const proc = spawn(BIN, [], { env: { PATH: process.env.PATH!, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  proc.stdout.on("data", (d) => (stdout += d));
  proc.stderr.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => proc.on("exit", (code) => resolve(code)));
  const t = setTimeout(() => proc.kill("SIGKILL"), 30_000);
  void exited.then(() => clearTimeout(t));
  return { proc, exited, out: () => stdout, err: () => stderr };
}

describe("weft-lease-server from the environment alone", () => {
  const dir = tempDir("weft-env-server-");
  afterAll(() => dir.cleanup());

  it("starts from WEFT_* variables and listens where they say", async () => {
    const [grpcPort, httpPort] = [await freePort(), await freePort()];
    const db = join(dir.path, "env.db");
    const s = run({
      WEFT_STORE: `sqlite:${db}`, WEFT_NETWORK_CONFIG: writeNetConf(dir.path), WEFT_INSECURE: "true",
      WEFT_LISTEN: `127.0.0.1:${grpcPort}`, WEFT_HTTP_LISTEN: `127.0.0.1:${httpPort}`, WEFT_LEASE_TTL: "45s", WEFT_LOG_LEVEL: "warn",
      WEFT_NODENAME: "a typo",
    });
    try {
      await waitFor(async () => (await fetch(`http://127.0.0.1:${httpPort}/healthz`).catch(() => undefined))?.status === 200, `/healthz on WEFT_HTTP_LISTEN:\n${s.out()}${s.err()}`, 20_000);
      // WEFT_LOG_LEVEL=warn: the plaintext warning, but not the info line "lease server listening".
      expect(s.out()).toContain('"level":40');
      expect(s.out()).not.toContain('"level":30');
      expect(s.err()).toMatch(/^weft-lease-server: warning: WEFT_NODENAME is not a weft-lease-server setting and is ignored/m);
      expect(existsSync(db)).toBe(true);
      const metrics = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
      expect(metrics).toContain(`weft_build_info{version="${WEFT_VERSION}",backend="vxlan"} 1`);
      expect(WEFT_VERSION).toMatch(/^\d+\.\d+\.\d+/);

      const { client, call } = connect(`127.0.0.1:${grpcPort}`);
      const lease = await call("acquireLease", vxlanReq(1));
      expect(lease.ttl).toMatchObject({ seconds: 45 });
      client.close();
    } finally {
      s.proc.kill("SIGTERM");
      await s.exited;
    }
  }, 40_000);

  it.each([
    [{ WEFT_LEASE_TTL: "5x" }, 'weft-lease-server: WEFT_LEASE_TTL: "5x" is not a duration; write it like 30s, 10m or 24h'],
    [{ WEFT_INSECURE: "maybe" }, 'weft-lease-server: WEFT_INSECURE: "maybe" is not a boolean; use true or false'],
    [{ WEFT_HTTP_LISTEN: "nowhere" }, 'weft-lease-server: WEFT_HTTP_LISTEN: "nowhere" is not HOST:PORT; write it like 127.0.0.1:8080'],
  ])("a bad value in %j is named, exit 2, no stack", async (bad, message) => {
    const s = run({ WEFT_STORE: `sqlite:${join(dir.path, "bad.db")}`, WEFT_NETWORK_CONFIG: writeNetConf(dir.path), WEFT_INSECURE: "true", ...bad });
    expect(await s.exited).toBe(2);
    expect(s.err().trim()).toBe(message);
  }, 20_000);

  it("--help tells about the environment and needs no variable", async () => {
    const h = spawn(BIN, ["--help"], { env: { PATH: process.env.PATH! }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    h.stdout.on("data", (d) => (out += d));
    expect(await new Promise((r) => h.on("exit", r))).toBe(0);
    expect(out).toContain("Every flag can also be set as WEFT_<FLAG> (e.g. WEFT_NETWORK_CONFIG for --network-config); the command line wins.");
  }, 20_000);
});
