// bin/weft-agent configured by WEFT_* variables alone (no argv), as a
// container or a systemd EnvironmentFile would run it: one node of a real
// cluster in network namespaces. Each check below shows one variable was
// read; the config tests show the rest (every flag) without a kernel.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WEFT_VERSION } from "../../lib/src/build-info.js";
import { requireTools } from "../tools.js";
import { Cluster, ROOT, SERVER_IP, GRPC_PORT, shebangNodeFlags, stopProcess } from "./cluster.js";
import { ipJson, kernelTestEnv, newRunId, nsExec, sh, waitFor } from "./netns.js";

const env = kernelTestEnv({ nft: true });
const hasCurl = env.ok && requireTools({ curl: "curl" }, "the agent environment test");
const BIN = join(ROOT, "bin/weft-agent");
const API = "127.0.0.1:9470";
const METRICS_PORT = 9465;

describe.skipIf(!env.ok || !hasCurl)("weft-agent from the environment alone (nodes in namespaces)", () => {
  const c = new Cluster({ runId: newRunId(), nodes: 2 });
  const node = c.nodes[1]!;
  const token = "env-admin-token-0123456789abcdefghijklmnopqrstuvwxyz";
  let agent: ChildProcess | undefined;
  let out = "";

  /** Runs bin/weft-agent itself (its #! line) in node 1's namespace with exactly `vars`, no argv. */
  const runAgent = (vars: Record<string, string>) => {
    const p = spawn("ip", ["netns", "exec", node.ns, BIN], { cwd: ROOT, env: { PATH: process.env.PATH!, ...vars }, stdio: ["ignore", "pipe", "pipe"] });
    p.stdout!.on("data", (d) => (out += d));
    p.stderr!.on("data", (d) => (out += d));
    return p;
  };
  const curl = (ns: string, url: string, ...args: string[]) => sh("ip", ["netns", "exec", ns, "curl", "-s", "-m", "2", "-w", "\n%{http_code}", ...args, url], { allowFail: true })
    .then((r) => {
      const i = r.stdout.lastIndexOf("\n");
      return { code: Number(r.stdout.slice(i + 1)) || 0, body: r.stdout.slice(0, Math.max(0, i)) };
    });

  let vars: Record<string, string>;
  beforeAll(async () => {
    await Cluster.cleanupStale();
    await c.setup();
    await c.startServer();
    mkdirSync(node.stateDir, { recursive: true });
    const secret = (name: string, text: string) => {
      const p = join(c.workDir, name);
      writeFileSync(p, text, { mode: 0o600 });
      return p;
    };
    vars = {
      WEFT_SERVER: `${SERVER_IP}:${GRPC_PORT}`, WEFT_NODE_NAME: "env-node", WEFT_IFACE: "eth0", WEFT_PUBLIC_IP: node.underlayIP,
      WEFT_SUBNET_FILE: node.subnetFile, WEFT_STATE_DIR: node.stateDir, WEFT_HTTP_LISTEN: API,
      WEFT_METRICS_LISTEN: `${node.underlayIP}:${METRICS_PORT}`, WEFT_VXLAN_DEVICE: "weft-env",
      WEFT_WIREGUARD_DEVICE: "wg-env", WEFT_WIREGUARD_PSK_FILE: secret("psk", "Hn7dLMY0+nBFnsm9/ka0v4jLk5j2oGUUq5s4zRCHbhk=\n"), WEFT_WIREGUARD_KEY_ROTATION: "24h",
      WEFT_IP_MASQ: "yes", WEFT_FORWARD_RULES: "false", WEFT_WATCH_KERNEL: "0", WEFT_RESYNC_INTERVAL: "1s", WEFT_INSECURE: "true",
      WEFT_ADMIN_TOKEN_FILE: secret("admin-token", token), WEFT_LOG_LEVEL: "warn",
    };
    c.startAgent(0);
    agent = runAgent(vars);
    await waitFor("the env-configured agent ready", async () => (await curl(node.ns, `http://${API}/readyz`)).code === 200, 40_000, 200);
  }, 90_000);

  afterAll(async () => {
    await stopProcess(agent, "SIGKILL");
    await c.destroy();
  }, 60_000);

  it("joins the cluster under WEFT_NODE_NAME with WEFT_PUBLIC_IP, on the server of WEFT_SERVER", async () => {
    const lease = JSON.parse((await curl(node.ns, `http://${API}/v1/lease`)).body) as { publicIP: string; backendType: string };
    expect(lease).toMatchObject({ publicIP: node.underlayIP, backendType: "vxlan" });
    await c.waitReady(0);
    await waitFor("node 0 sees env-node", async () => (await c.agentApi<Array<{ nodeName: string; programmed: boolean }>>(0, "/v1/peers")).json.some((p) => p.nodeName === "env-node" && p.programmed), 20_000, 200);
  }, 40_000);

  it("writes WEFT_SUBNET_FILE (with WEFT_IP_MASQ) and keeps its state in WEFT_STATE_DIR", async () => {
    expect(readFileSync(node.subnetFile, "utf8")).toMatch(/^FLANNEL_IPMASQ=true$/m);
    expect(readdirSync(node.stateDir).length).toBeGreaterThan(0);
  });

  it("names the VXLAN device WEFT_VXLAN_DEVICE and leaves forwarding alone (WEFT_FORWARD_RULES=false)", async () => {
    const links = await ipJson<Array<{ ifname: string }>>(node.ns, "link", "show");
    expect(links.map((l) => l.ifname)).toContain("weft-env");
    const table = await nsExec(node.ns, "nft", "list", "table", "ip", "weft");
    expect(table.stdout).toContain("chain postrouting");
    expect(table.stdout).not.toContain("chain forward");
  });

  it("serves the read-only listener on WEFT_METRICS_LISTEN to other hosts, and the API only on loopback", async () => {
    const m = await curl(c.srv, `http://${node.underlayIP}:${METRICS_PORT}/metrics`);
    expect(m.code).toBe(200);
    expect(m.body).toContain(`weft_build_info{version="${WEFT_VERSION}",backend="vxlan"} 1`);
    expect((await curl(c.srv, `http://${node.underlayIP}:${METRICS_PORT}/readyz`)).code).toBe(200);
    expect((await curl(c.srv, `http://${node.underlayIP}:${METRICS_PORT}/v1/peers`)).code).toBe(404);
    expect((await curl(c.srv, `http://${node.underlayIP}:${METRICS_PORT}/v1/wireguard/rotate-key`, "-X", "POST")).code).toBe(404);
    expect((await curl(c.srv, `http://${node.underlayIP}:9470/v1/peers`)).code).toBe(0);
  });

  it("guards the API's POST route with WEFT_ADMIN_TOKEN_FILE, and logs at WEFT_LOG_LEVEL", async () => {
    expect((await curl(node.ns, `http://${API}/v1/wireguard/rotate-key`, "-X", "POST")).code).toBe(401);
    // warn: the refusal and the plaintext warning, none of the info lines ("ready", "lease acquired").
    expect(out).toContain('"msg":"admin request refused"');
    expect(out).not.toContain('"level":30');
  });

  it("runs node with its #! flags: no variable changes them", () => {
    const cmdline = readFileSync(`/proc/${agent!.pid}/cmdline`, "utf8").split("\0");
    for (const flag of shebangNodeFlags(BIN)) expect(cmdline).toContain(flag);
    expect(cmdline.filter((a) => a.startsWith("WEFT") || a.includes("weft-env"))).toEqual([]);
  });

  it.each([
    // A bad value is a usage error (exit 2, not retried by systemd); a port in use is a run-time failure
    // (exit 1, retried), as for the lease server.
    [{ WEFT_RESYNC_INTERVAL: "soon" }, 'weft-agent: WEFT_RESYNC_INTERVAL: "soon" is not a duration from 1s to 1h; write it like 10s', 2],
    [{ WEFT_WIREGUARD_PSK_FILE: "/nonexistent/psk" }, "weft-agent: WEFT_WIREGUARD_PSK_FILE: /nonexistent/psk does not exist", 2],
    [{ WEFT_WIREGUARD_KEY_ROTATION: "1s" }, 'weft-agent: WEFT_WIREGUARD_KEY_ROTATION: "1s" is not a duration from 1m to 24d', 2],
    [{ WEFT_WATCH_KERNEL: "sometimes" }, 'weft-agent: WEFT_WATCH_KERNEL: "sometimes" is not a boolean; use true or false', 2],
    [{ WEFT_METRICS_LISTEN: `${node.underlayIP}:${METRICS_PORT}`, WEFT_HTTP_LISTEN: "127.0.0.1:9471" }, `weft-agent: WEFT_METRICS_LISTEN ${node.underlayIP}:${METRICS_PORT}: cannot listen (EADDRINUSE): the port is in use; pick another`, 1],
  ])("a bad value in %j stops a second agent with that variable named", async (bad, message, exitCode) => {
    const before = out.length;
    const p = runAgent({ ...vars, WEFT_NODE_NAME: "env-node-2", WEFT_STATE_DIR: join(c.workDir, "state-2"), WEFT_SUBNET_FILE: join(c.workDir, "subnet-2.env"), WEFT_VXLAN_DEVICE: "weft-env2", ...bad });
    const code = await new Promise<number | null>((resolve) => p.once("exit", resolve));
    expect(out.slice(before)).toContain(message);
    expect(code).toBe(exitCode);
    expect(existsSync(join(c.workDir, "subnet-2.env"))).toBe(false);
  }, 20_000);
});
