// Every lease server flag can be set as WEFT_<FLAG>; the command line wins,
// and errors name the variable when the value came from the environment.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { argvOf, envOf, expectCoverage, expectEnvEqualsArgv, type Scenario } from "../../lib/test/env-flags.js";
import { FLAGS, loadServerConfig } from "../src/config.js";
import { tempDir } from "./helpers.js";
import { writeServerPki } from "./identity-pki.js";
import { writeNetConf } from "./server-process.js";

const dir = tempDir("weft-config-env-");
afterAll(() => dir.cleanup());
const file = (name: string, content: string) => {
  const p = join(dir.path, name);
  writeFileSync(p, content, { mode: 0o600 });
  return p;
};

let scenarios: Record<string, Scenario>;
beforeAll(async () => {
  const pki = await writeServerPki(dir.path);
  const netconf = writeNetConf(dir.path);
  scenarios = {
    "etcd with TLS everywhere": {
      store: "etcd:https://10.0.0.1:2379,https://10.0.0.2:2379", "network-config": netconf, "etcd-prefix": "/coreos.com/network",
      "etcd-cafile": file("etcd-ca", "etcd ca"), "etcd-certfile": file("etcd-cert", "etcd cert"), "etcd-keyfile": file("etcd-key", "etcd key"),
      "etcd-username": "weft", "etcd-password-file": file("etcd-password", "secret\n"),
      listen: "127.0.0.1:7700", "http-listen": "0.0.0.0:7701", "lease-ttl": "30s",
      "tls-cert": pki.file("server.crt"), "tls-key": pki.file("server.key"), "tls-client-ca": pki.file("hand-ca.crt"),
      "admin-token-file": file("admin-token", "0123456789abcdefghijklmnopqrstuvwxyz\n"),
      "http-tls-cert": pki.file("server.crt"), "http-tls-key": pki.file("server.key"), "admin-client-ca": pki.file("server-ca.crt"),
      "ca-cert": pki.file("hand-ca.crt"), "ca-key": file("hand-ca.key", "a key"), "state-dir": join(dir.path, "state"), "node-cert-validity": "7d",
      "max-connections-per-client": "10", "max-watches-per-client": "20", "max-rpcs-per-client": "30",
      "allow-link-local-public-ip": "true", "log-level": "debug",
    },
    "sqlite in plaintext": { store: `sqlite:${join(dir.path, "leases.db")}`, "network-config": netconf, insecure: "true", "init-store": "true" },
  };
});

describe("weft-lease-server configuration from the environment", () => {
  it("the scenarios set every flag", () => {
    expectCoverage(FLAGS, scenarios);
  });

  it.each(["etcd with TLS everywhere", "sqlite in plaintext"])("%s: WEFT_* alone give the config the flags give, and each one counts", (name) => {
    expectEnvEqualsArgv(FLAGS, scenarios[name]!, loadServerConfig);
  });

  it("the command line wins", () => {
    const s = scenarios["sqlite in plaintext"]!;
    const cfg = loadServerConfig(["--lease-ttl", "1m", "--insecure=true"], { ...envOf(s), WEFT_LEASE_TTL: "30s", WEFT_INSECURE: "false" })!;
    expect(cfg.leaseTtlMs).toBe(60_000);
    expect(cfg.tls).toBeUndefined();
  });

  it("a variable naming the network config counts as given: a missing file is an error even with etcd", () => {
    const env = { WEFT_STORE: "etcd:http://127.0.0.1:2379", WEFT_INSECURE: "1", WEFT_NETWORK_CONFIG: join(dir.path, "absent.json") };
    expect(() => loadServerConfig([], env)).toThrow(/^WEFT_NETWORK_CONFIG: cannot read .*absent\.json \(ENOENT\)/);
    // Not given at all: the config lives in etcd.
    expect(loadServerConfig([], { WEFT_STORE: "etcd:http://127.0.0.1:2379", WEFT_INSECURE: "1" })!.network).toBeUndefined();
  });

  it.each([
    [{ WEFT_LEASE_TTL: "5x" }, /^WEFT_LEASE_TTL: "5x" is not a duration; write it like 30s/],
    [{ WEFT_LEASE_TTL: "1s" }, /^WEFT_LEASE_TTL: 1s is shorter than 5s/],
    [{ WEFT_LISTEN: "nowhere" }, /^WEFT_LISTEN: "nowhere" is not HOST:PORT/],
    [{ WEFT_INSECURE: "maybe" }, /^WEFT_INSECURE: "maybe" is not a boolean; use true or false$/],
    [{ WEFT_MAX_RPCS_PER_CLIENT: "0" }, /^WEFT_MAX_RPCS_PER_CLIENT: "0" is not a whole number/],
    [{ WEFT_TLS_CERT: "/nonexistent.crt" }, /^--insecure conflicts with WEFT_TLS_CERT\/--tls-key/],
  ])("an error about a value from %j names the variable", (vars, re) => {
    const base = envOf(scenarios["sqlite in plaintext"]!);
    let err: unknown;
    try { loadServerConfig(argvOf({ insecure: "true" }, FLAGS), { ...base, WEFT_INSECURE: "", ...vars }); } catch (e) { err = e; }
    expect(err).toMatchObject({ code: "CONFIG_INVALID" });
    expect((err as Error).message).toMatch(re);
  });

  it("the same value on the command line is named as the flag", () => {
    expect(() => loadServerConfig(["--insecure", "--lease-ttl", "5x"], envOf(scenarios["sqlite in plaintext"]!))).toThrow(/^--lease-ttl: "5x" is not a duration/);
  });

  it("unknown WEFT_ variables are reported once each and change nothing", () => {
    const warnings: string[] = [];
    const s = scenarios["sqlite in plaintext"]!;
    const cfg = loadServerConfig([], { ...envOf(s), WEFT_LEASETTL: "1m" }, (m) => warnings.push(m))!;
    expect(cfg.leaseTtlMs).toBe(86_400_000);
    expect(warnings).toEqual([expect.stringMatching(/^warning: WEFT_LEASETTL is not a weft-lease-server setting and is ignored \(did you mean WEFT_LEASE_TTL\?/)]);
  });
});
