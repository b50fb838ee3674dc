// Network-namespace plumbing for kernel tests. Everything a test creates is
// named `wft-<runid>-...`, so cleanup can remove exactly our own leftovers
// (also from earlier crashed runs) and nothing else. Node never switches
// namespaces itself: commands and processes run under `ip netns exec`.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { findBin, requireOrSkip } from "../tools.js";

export { findBin };

export const NS_PREFIX = "wft-";

/** "<pid>r<random>": the owner's pid lets a later run tell stale leftovers from a run still going. */
export function newRunId(): string {
  return `${process.pid}r${Math.floor(Math.random() * 36 ** 3).toString(36)}`;
}

/** Run ids (from namespace names) whose owner process is gone. Fixed ids (demo, bench) are left to their owners. */
export async function staleRunIds(): Promise<string[]> {
  const out = new Set<string>();
  for (const ns of await listNetns()) {
    const m = /^wft-((\d+)r[a-z0-9]+)-/.exec(ns);
    if (!m) continue;
    const pid = Number(m[2]);
    if (pid !== process.pid && existsSync(`/proc/${pid}`)) continue;
    out.add(m[1]!);
  }
  return [...out];
}

export async function sh(cmd: string, args: readonly string[], opts: { input?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number; allowFail?: boolean } = {}): Promise<{ stdout: string; stderr: string; code: number }> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { env: opts.env ?? process.env, stdio: [opts.input === undefined ? "ignore" : "pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    p.stdout!.on("data", (d) => (stdout += d));
    p.stderr!.on("data", (d) => (stderr += d));
    const t = setTimeout(() => p.kill("SIGKILL"), opts.timeoutMs ?? 30_000);
    p.on("error", (e) => { clearTimeout(t); reject(e); });
    p.on("close", (code) => {
      clearTimeout(t);
      const c = code ?? -1;
      if (c !== 0 && !opts.allowFail) reject(new Error(`${cmd} ${args.join(" ")} exited ${c}: ${stderr.trim() || stdout.trim()}`));
      else resolve({ stdout, stderr, code: c });
    });
    if (opts.input !== undefined) {
      p.stdin!.on("error", () => { /* the command may exit without reading */ });
      p.stdin!.end(opts.input);
    }
  });
}

export const ip = (...args: string[]) => sh("ip", args);
export const nsExec = (ns: string, cmd: string, ...args: string[]) => sh("ip", ["netns", "exec", ns, cmd, ...args]);

export async function ipJson<T = unknown[]>(ns: string, ...args: string[]): Promise<T> {
  const { stdout } = await sh("ip", ["-n", ns, "-j", ...args]);
  return (stdout.trim() ? JSON.parse(stdout) : []) as T;
}

export async function bridgeFdbJson(ns: string, dev: string): Promise<Array<{ mac: string; dst?: string; state?: string; flags?: string[] }>> {
  const { stdout } = await sh("ip", ["netns", "exec", ns, "bridge", "-j", "fdb", "show", "dev", dev]);
  return stdout.trim() ? JSON.parse(stdout) : [];
}

export async function listNetns(): Promise<string[]> {
  const { stdout } = await sh("ip", ["netns", "list"], { allowFail: true });
  return stdout.split("\n").map((l) => l.split(" ")[0]!).filter(Boolean);
}

export async function addNetns(name: string): Promise<void> {
  if (!name.startsWith(NS_PREFIX)) throw new Error(`refusing to create namespace ${name} without prefix ${NS_PREFIX}`);
  await ip("netns", "add", name);
  await ip("-n", name, "link", "set", "lo", "up");
}

/** Kills every process inside our namespaces (found with `ip netns pids`, never by name), then deletes them. Only names with our prefix (and optional run id). */
export async function cleanupNetns(runPrefix = NS_PREFIX): Promise<void> {
  if (!runPrefix.startsWith(NS_PREFIX)) throw new Error(`refusing to clean up ${runPrefix}`);
  for (const ns of await listNetns()) {
    if (!ns.startsWith(runPrefix)) continue;
    const { stdout } = await sh("ip", ["netns", "pids", ns], { allowFail: true });
    for (const pid of stdout.split(/\s+/).filter(Boolean).map(Number)) {
      try { process.kill(pid, "SIGKILL"); } catch { /* gone */ }
    }
    await sh("ip", ["netns", "del", ns], { allowFail: true });
  }
}

export interface EnvCheck { readonly ok: boolean; readonly reason: string }

/** Missing root or tools: CI fails (throws), local runs skip with a visible reason. */
export function kernelTestEnv(needs: { cni?: boolean; iperf3?: boolean; openssl?: boolean; nft?: boolean; iptables?: boolean; wireguard?: boolean; tcpdump?: boolean } = {}): EnvCheck {
  const missing: string[] = [];
  if (process.getuid?.() !== 0) missing.push("root");
  if (!findBin("ip")) missing.push("ip (apt-get install iproute2)");
  if (!findBin("bridge")) missing.push("bridge (apt-get install iproute2)");
  if (needs.cni && !existsSync("/usr/lib/cni/bridge")) missing.push("/usr/lib/cni/bridge (apt-get install containernetworking-plugins)");
  if (needs.cni && !existsSync("/usr/lib/cni/host-local")) missing.push("/usr/lib/cni/host-local (apt-get install containernetworking-plugins)");
  if (needs.cni && !findBin("ping")) missing.push("ping (apt-get install iputils-ping)");
  if (needs.cni && !findBin("curl")) missing.push("curl (apt-get install curl)");
  // The bridge plugin masquerades with iptables when the agent does not (Flannel's CNI semantics).
  if (needs.cni && !findBin("iptables")) missing.push("iptables (apt-get install iptables)");
  if (needs.iperf3 && !findBin("iperf3")) missing.push("iperf3 (apt-get install iperf3)");
  if (needs.openssl && !findBin("openssl")) missing.push("openssl (apt-get install openssl)");
  if (needs.nft && !findBin("nft")) missing.push("nft (apt-get install nftables)");
  if (needs.iptables && !findBin("iptables")) missing.push("iptables (apt-get install iptables)");
  // The kernel here may lack WireGuard; the agent then runs wireguard-go, and the tests read devices with wg.
  if (needs.wireguard && !findBin("wireguard-go")) missing.push("wireguard-go (apt-get install wireguard-go)");
  if (needs.wireguard && !findBin("wg")) missing.push("wg (apt-get install wireguard-tools)");
  if (needs.tcpdump && !findBin("tcpdump")) missing.push("tcpdump (apt-get install tcpdump)");
  const ok = requireOrSkip(missing, "kernel test");
  return { ok, reason: ok ? "" : missing.join(", ") };
}

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 15_000, stepMs = 100): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < end) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v as T;
    } catch (err) { last = err; }
    await new Promise((r) => setTimeout(r, stepMs));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ""}`);
}

export type { ChildProcess };

/** Milliseconds until `fn` holds, polling every `stepMs`; throws after `timeoutMs`. */
export async function timeUntil(what: string, fn: () => Promise<boolean>, timeoutMs = 5000, stepMs = 10): Promise<number> {
  const t0 = performance.now();
  await waitFor(what, async () => (await fn()) || undefined, timeoutMs, stepMs);
  return Math.round(performance.now() - t0);
}
