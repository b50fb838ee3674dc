// Every agent flag can be set as WEFT_<FLAG>; the command line wins, and
// errors name the variable when the value came from the environment.
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { envOf, expectCoverage, expectEnvEqualsArgv, type Scenario } from "../../lib/test/env-flags.js";
import { tempDir } from "../../lease-server/test/helpers.js";
import { writeServerPki } from "../../lease-server/test/identity-pki.js";
import { FLAGS, loadAgentConfig, type AgentConfig } from "../src/config.js";

const dir = tempDir("weft-agent-env-");
afterAll(() => dir.cleanup());
const file = (name: string, content: string) => {
  const p = join(dir.path, name);
  writeFileSync(p, content, { mode: 0o600 });
  return p;
};

let scenarios: Record<string, Scenario>;
beforeAll(async () => {
  const pki = await writeServerPki(dir.path);
  const node = await pki.handCa.leaf("n1", [{ type: "dns", value: "n1" }], x509.ExtendedKeyUsage.clientAuth);
  scenarios = {
    "mTLS with every option": {
      server: "10.0.0.1:7600,10.0.0.2:7600", "node-name": "n1", iface: "eth1", "public-ip": "198.18.0.7",
      "subnet-file": join(dir.path, "subnet.env"), "state-dir": join(dir.path, "state"),
      "http-listen": "0.0.0.0:9464", "metrics-listen": "0.0.0.0:9465", "admin-token-file": file("admin-token", "0123456789abcdefghijklmnopqrstuvwxyz\n"),
      "vxlan-device": "weft.9", "wireguard-device": "wg9", "wireguard-psk-file": file("psk", "Hn7dLMY0+nBFnsm9/ka0v4jLk5j2oGUUq5s4zRCHbhk=\n"), "wireguard-key-rotation": "24h",
      "ip-masq": "true", "forward-rules": "false", "watch-kernel": "false", "resync-interval": "5s",
      "tls-ca": pki.file("server-ca.crt"), "tls-cert": file("n1.crt", node.cert), "tls-key": file("n1.key", node.key), "log-level": "debug",
    },
    "join token": { server: "10.0.0.1:7600", "node-name": "n2", "tls-ca": pki.file("server-ca.crt"), "join-token-file": file("join-token", "abc123.0123456789abcdef\n"), "state-dir": join(dir.path, "state2") },
    plaintext: { server: "10.0.0.1:7600", "node-name": "n3", insecure: "true" },
    cleanup: { cleanup: "true" },
  };
});

/** The environment's config records that the listen addresses came from WEFT_METRICS_LISTEN / WEFT_HTTP_LISTEN (for bind errors). */
const fromEnvName = (scenario: Readonly<Record<string, string>>) => (c: unknown) => {
  const a = c as AgentConfig;
  if (a.cleanup) return c;
  const m = a.metricsListen;
  return {
    ...a,
    ...("http-listen" in scenario ? { httpListen: { ...a.httpListen, name: "WEFT_HTTP_LISTEN" } } : {}),
    ...(m ? { metricsListen: { ...m, name: "WEFT_METRICS_LISTEN" } } : {}),
  };
};

describe("weft-agent configuration from the environment", () => {
  it("the scenarios set every flag", () => {
    expectCoverage(FLAGS, scenarios);
  });

  it.each(["mTLS with every option", "join token", "plaintext", "cleanup"])("%s: WEFT_* alone give the config the flags give, and each one counts", (name) => {
    expectEnvEqualsArgv(FLAGS, scenarios[name]!, loadAgentConfig, fromEnvName(scenarios[name]!));
  });

  it("the command line wins", () => {
    const c = loadAgentConfig(["--node-name", "cli", "--forward-rules", "--metrics-listen", "127.0.0.1:9465"], { ...envOf(scenarios.plaintext!), WEFT_NODE_NAME: "env", WEFT_FORWARD_RULES: "false", WEFT_METRICS_LISTEN: "0.0.0.0:1" }) as AgentConfig;
    expect(c).toMatchObject({ nodeName: "cli", forwardRules: true, metricsListen: { host: "127.0.0.1", port: 9465, name: "--metrics-listen" } });
  });

  it.each([
    [{ WEFT_RESYNC_INTERVAL: "soon" }, /^WEFT_RESYNC_INTERVAL: "soon" is not a duration from 1s to 1h/],
    [{ WEFT_NODE_NAME: "Bad_Name" }, /^WEFT_NODE_NAME/],
    [{ WEFT_SERVER: "nowhere" }, /^WEFT_SERVER: "nowhere" is not HOST:PORT/],
    [{ WEFT_METRICS_LISTEN: "9465" }, /^WEFT_METRICS_LISTEN: "9465" is not HOST:PORT/],
    [{ WEFT_HTTP_LISTEN: "0.0.0.0:9464" }, /^WEFT_HTTP_LISTEN 0\.0\.0\.0: POST \/v1\/wireguard\/rotate-key would be open/],
    [{ WEFT_WATCH_KERNEL: "sometimes" }, /^WEFT_WATCH_KERNEL: "sometimes" is not a boolean; use true or false$/],
    [{ WEFT_TLS_CA: "/nonexistent/ca.crt" }, /^WEFT_INSECURE conflicts with WEFT_TLS_CA\/--tls-cert\/--tls-key; pass one or the other$/],
  ])("an error about a value from %j names the variable", (vars, re) => {
    let err: unknown;
    try { loadAgentConfig([], { ...envOf(scenarios.plaintext!), ...vars }); } catch (e) { err = e; }
    expect(err).toMatchObject({ code: "CONFIG_INVALID" });
    expect((err as Error).message).toMatch(re);
  });

  it("unknown WEFT_ variables are reported once each and change nothing", () => {
    const warnings: string[] = [];
    const c = loadAgentConfig([], { ...envOf(scenarios.plaintext!), WEFT_NODENAME: "typo" }, (m) => warnings.push(m)) as AgentConfig;
    expect(c.nodeName).toBe("n3");
    expect(warnings).toEqual([expect.stringMatching(/^warning: WEFT_NODENAME is not a weft-agent setting and is ignored \(did you mean WEFT_NODE_NAME\?/)]);
  });
});

describe("weft-agent --help", () => {
  it("lists every flag and says how to set them from the environment", () => {
    const r = spawnSync(join(import.meta.dirname, "../../bin/weft-agent"), ["--help"], { encoding: "utf8", env: { PATH: process.env.PATH } });
    expect(r.status).toBe(0);
    for (const f of Object.keys(FLAGS)) expect(r.stdout).toContain(`--${f}`);
    expect(r.stdout).toContain("Every flag can also be set as WEFT_<FLAG> (e.g. WEFT_NODE_NAME for --node-name); the command line wins.");
  });
});
