// The agent unit's capability set is enough, and needed: the real agent runs
// as root holding only the unit's CapabilityBoundingSet (setpriv, as systemd
// would set it) in a throwaway network namespace, and brings up VXLAN with its
// masquerade and forward rules (nft, iptables) and WireGuard (wireguard-go where
// the kernel has none). Without CAP_NET_ADMIN it fails.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { requireTools } from "../tools.js";
import { addNetns, cleanupNetns, ip, kernelTestEnv, newRunId, nsExec, sh, waitFor } from "../e2e/netns.js";
import { parseUnitFile, words } from "./unit-file.js";

const ROOT = resolve(import.meta.dirname, "../..");
const CAPS = words(parseUnitFile(readFileSync(join(ROOT, "deploy/weft-agent.service"), "utf8")), "Service", "CapabilityBoundingSet");
const env = kernelTestEnv({ nft: true, iptables: true, wireguard: true });
const ready = env.ok && requireTools({ setpriv: "util-linux", curl: "curl" }, "the agent capability test");
const run = `wft-${newRunId()}`;
const tmp = mkdtempSync(join(tmpdir(), "weft-caps-"));
afterAll(async () => {
  await cleanupNetns(run);
  rmSync(tmp, { recursive: true, force: true });
});

/** A namespace with an underlay and a default route, a lease server, and the agent under `caps`; returns the agent's exit (or undefined while it runs). */
async function agentWith(name: string, backend: string, caps: readonly string[]) {
  const ns = `${run}${name}`;
  const dir = join(tmp, name);
  await addNetns(ns);
  await ip("-n", ns, "link", "add", "u0", "type", "veth", "peer", "name", "u1");
  await ip("-n", ns, "addr", "add", "198.18.20.1/24", "dev", "u0");
  for (const d of ["u0", "u1"]) await ip("-n", ns, "link", "set", d, "up");
  await ip("-n", ns, "route", "add", "default", "via", "198.18.20.254", "dev", "u0");
  await sh("mkdir", ["-p", dir]);
  writeFileSync(join(dir, "net-conf.json"), JSON.stringify({ Network: "10.244.0.0/16", Backend: { Type: backend } }));
  const node = process.execPath;
  spawn("ip", ["netns", "exec", ns, node, join(ROOT, "bin/weft-lease-server"), "--insecure", "--store", `sqlite:${dir}/leases.db`, "--state-dir", dir, "--network-config", join(dir, "net-conf.json"), "--listen", "127.0.0.1:7600", "--http-listen", "127.0.0.1:7601"], { stdio: "ignore" });
  await waitFor("lease server", async () => (await nsExec(ns, "curl", "-sf", "http://127.0.0.1:7601/readyz").catch(() => undefined))?.code === 0, 20_000, 200);
  const bounding = ["-all", ...caps.map((c) => `+${c.replace(/^CAP_/, "").toLowerCase()}`)].join(",");
  const agent = spawn("ip", ["netns", "exec", ns, "setpriv", `--bounding-set=${bounding}`, "--inh-caps=-all", node, join(ROOT, "bin/weft-agent"),
    "--insecure", "--server", "127.0.0.1:7600", "--node-name", name, "--state-dir", join(dir, "agent"), "--subnet-file", join(dir, "run/subnet.env"),
    "--ip-masq", "--wireguard-device", `wg-${name}`, "--http-listen", "127.0.0.1:9464"], { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  agent.stdout!.on("data", (d) => (output += d));
  agent.stderr!.on("data", (d) => (output += d));
  const exited = new Promise<number | null>((res) => agent.on("exit", (code) => res(code)));
  return { ns, exited, output: () => output };
}

describe.runIf(ready)("the agent with only the unit's capabilities", () => {
  it("holds CAP_NET_ADMIN and CAP_NET_RAW", () => expect([...CAPS].sort()).toEqual(["CAP_NET_ADMIN", "CAP_NET_RAW"]));

  it.each([["vx", "vxlan"], ["wg", "wireguard"]])("%s: %s comes up with masquerade and forward rules", async (name, backend) => {
    const a = await agentWith(name!, backend!, CAPS);
    await waitFor("agent ready", async () => (await nsExec(a.ns, "curl", "-s", "http://127.0.0.1:9464/readyz").catch(() => undefined))?.stdout === "ready", 30_000, 200)
      .catch((err: Error) => { throw new Error(`${err.message}; the agent wrote:\n${a.output()}`); });
    expect((await nsExec(a.ns, "nft", "list", "table", "ip", "weft")).stdout).toMatch(/masquerade/);
    expect((await nsExec(a.ns, "iptables", "-S", "FORWARD")).stdout.match(/weft: cluster traffic/g)).toHaveLength(2);
    const links = (await ip("-n", a.ns, "-br", "link")).stdout;
    expect(links).toMatch(backend === "vxlan" ? /^weft\.1\s/m : new RegExp(`^wg-${name}\\s`, "m"));
  }, 60_000);

  it("fails without CAP_NET_ADMIN", async () => {
    const a = await agentWith("no", "vxlan", CAPS.filter((c) => c !== "CAP_NET_ADMIN"));
    const code = await Promise.race([a.exited, new Promise<string>((res) => setTimeout(() => res("still running"), 30_000))]);
    expect(code).not.toBe(0);
    expect(code).not.toBe("still running");
    expect(a.output()).toMatch(/EPERM/);
  }, 60_000);
});
