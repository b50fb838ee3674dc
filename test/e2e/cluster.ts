// A weft cluster made of network namespaces, for e2e tests, the demo and the
// benchmarks. Layout (all names `wft-<run>-...`):
//   <p>sw   switch: bridge br0, one veth port per host (segment 0, 198.18.0.0/24)
//   <p>swS  switch of underlay segment S > 0 (198.18.S.0/24), when asked for
//   <p>rt   router joining the segments (198.18.S.253 on each), when there are several
//   <p>srv  lease server, 198.18.0.254 on segment 0
//   <p>ext  a host outside the cluster, 198.18.0.200 on segment 0 (addExternalHost)
//   <p>nI   node I, 198.18.S.(I+1) on its segment S, runs one weft-agent process
//   <p>nI-pJ pod J of node I, attached by the real CNI bridge + host-local plugins
//            with the Flannel CNI plugin's semantics (ipMasq = !FLANNEL_IPMASQ, default gateway)
// Processes run under `ip netns exec`; their logs go to <workDir>/logs.
import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { addNetns, cleanupNetns, ip, NS_PREFIX, nsExec, sh, staleRunIds, waitFor } from "./netns.js";

export const ROOT = resolve(import.meta.dirname, "../..");
export const SERVER_IP = "198.18.0.254";
export const GRPC_PORT = 7600;
export const AGENT_API_PORT = 9464;
export const EXTERNAL_IP = "198.18.0.200";
const WORK_MARKER = "/tmp/wft-";

export interface ClusterOptions {
  readonly runId: string;
  readonly nodes: number;
  readonly leaseTtl?: string;
  readonly resyncInterval?: string;
  /** "dist" (default) runs bin/ with its Node flags, as production does; "tsx" runs the TypeScript sources. */
  readonly runner?: "tsx" | "dist";
  readonly network?: string;
  /** The network config's Backend object; default {"Type": "vxlan"}. */
  readonly backend?: Record<string, unknown>;
  /** Underlay segment of each node (default all 0); nodes on different segments talk through the router. */
  readonly segments?: readonly number[];
  /** Serve gRPC with TLS and require client certificates (certs from makeCerts()). */
  readonly mtls?: boolean;
  /** Keep leases in an etcd started in the server namespace instead of SQLite. */
  readonly etcd?: boolean;
  /** Lease servers (on the etcd store; default 1), on ports 7600, 7610, ...; agents get them all in --server. */
  readonly servers?: number;
}

/** Where etcd listens inside the server namespace (its own loopback). */
export const ETCD_URL = "http://127.0.0.1:2379";

export interface NodeInfo {
  readonly index: number;
  readonly segment: number;
  readonly name: string;
  readonly ns: string;
  readonly underlayIP: string;
  readonly subnetFile: string;
  readonly stateDir: string;
  agent?: ChildProcess;
}

export interface Pod {
  readonly ns: string;
  readonly node: number;
  readonly ip: string;
}

export class Cluster {
  readonly prefix: string;
  readonly workDir: string;
  readonly sw: string;
  readonly srv: string;
  readonly nodes: NodeInfo[] = [];
  readonly pods: Pod[] = [];
  server?: ChildProcess;
  /** Servers after the first (etcd store). */
  readonly moreServers: Array<ChildProcess | undefined> = [];
  etcd?: ChildProcess;
  /** The lease servers' --admin-token-file content: send it as "Authorization: Bearer" to the REST routes that change state. */
  readonly adminToken = "e2e-admin-token-0123456789abcdefghijklmnopqrstuvwxyz";

  constructor(readonly opts: ClusterOptions) {
    this.prefix = `${NS_PREFIX}${opts.runId}-`;
    this.workDir = `${WORK_MARKER}${opts.runId}`;
    this.sw = `${this.prefix}sw`;
    this.srv = `${this.prefix}srv`;
    for (let i = 0; i < opts.nodes; i++) {
      const segment = opts.segments?.[i] ?? 0;
      this.nodes.push({
        index: i, segment, name: `node-${i}`, ns: `${this.prefix}n${i}`, underlayIP: `198.18.${segment}.${i + 1}`,
        subnetFile: join(this.workDir, `node-${i}`, "run", "subnet.env"), stateDir: join(this.workDir, `node-${i}`, "state"),
      });
    }
  }

  /**
   * Removes leftovers of earlier, dead runs (their owner pid is gone): their namespaces, the processes
   * inside them (found with `ip netns pids`) and their work dirs only.
   */
  static async cleanupStale(): Promise<void> {
    for (const run of await staleRunIds()) {
      await cleanupNetns(`${NS_PREFIX}${run}-`);
      rmSync(`${WORK_MARKER}${run}`, { recursive: true, force: true });
    }
  }

  /** Removes what an earlier run with this fixed id (demo, bench) left behind. */
  async cleanupPrevious(): Promise<void> {
    await cleanupNetns(this.prefix);
    rmSync(this.workDir, { recursive: true, force: true });
  }

  get segments(): number[] {
    return [...new Set([0, ...this.nodes.map((n) => n.segment)])].sort((a, b) => a - b);
  }

  switchOf(segment: number): string {
    return segment === 0 ? this.sw : `${this.prefix}sw${segment}`;
  }

  get router(): string {
    return `${this.prefix}rt`;
  }

  async setup(): Promise<void> {
    if (this.opts.runner !== "tsx") assertBuilt();
    mkdirSync(join(this.workDir, "logs"), { recursive: true });
    for (const seg of this.segments) {
      const sw = this.switchOf(seg);
      await addNetns(sw);
      await ip("-n", sw, "link", "add", "br0", "type", "bridge");
      await ip("-n", sw, "link", "set", "br0", "up");
    }
    await this.attach(this.srv, "srv", `${SERVER_IP}/24`);
    if (this.segments.length > 1) {
      await addNetns(this.router);
      for (const seg of this.segments) await this.attach(this.router, "rt", `198.18.${seg}.253/24`, seg, `eth${seg}`);
      await nsExec(this.router, "sysctl", "-qw", "net.ipv4.ip_forward=1");
    }
    for (const n of this.nodes) {
      await this.attach(n.ns, `n${n.index}`, `${n.underlayIP}/24`, n.segment);
      await nsExec(n.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1");
    }
    if (this.segments.length > 1) {
      // Every host reaches the other segments through the router (inside our namespaces only).
      for (const [ns, seg] of [[this.srv, 0], ...this.nodes.map((n) => [n.ns, n.segment] as const)] as const) {
        for (const other of this.segments) if (other !== seg) await ip("-n", ns, "route", "add", `198.18.${other}.0/24`, "via", `198.18.${seg}.253`);
      }
    }
  }

  /** A host namespace with `dev` plugged into a segment's switch; the router's namespace exists already. */
  private async attach(ns: string, port: string, cidr: string, segment = 0, dev = "eth0"): Promise<void> {
    const sw = this.switchOf(segment);
    if (ns !== this.router) await addNetns(ns);
    await ip("-n", sw, "link", "add", port, "type", "veth", "peer", "name", dev, "netns", ns);
    await ip("-n", sw, "link", "set", port, "master", "br0", "up");
    await ip("-n", ns, "addr", "add", cidr, "dev", dev);
    await ip("-n", ns, "link", "set", dev, "up");
  }

  /** A host outside the cluster on segment 0 (198.18.0.200), for masquerade checks. */
  async addExternalHost(): Promise<string> {
    const ns = `${this.prefix}ext`;
    await this.attach(ns, "ext", `${EXTERNAL_IP}/24`);
    return ns;
  }

  private nodeCmd(entry: "agent" | "server"): string[] {
    if (this.opts.runner !== "tsx") {
      const bin = join(ROOT, "bin", entry === "agent" ? "weft-agent" : "weft-lease-server");
      // As the shebang starts it (its environment and V8 flags), so the demo and benchmarks run what production runs.
      return [...shebangCommand(bin), bin];
    }
    const src = join(ROOT, entry === "agent" ? "node-agent/src/main.ts" : "lease-server/src/main.ts");
    // (tsx: only when asked for; the default runs what production runs.)
    return [process.execPath, "--import", "tsx", join(ROOT, "test/e2e/run-main.ts"), src];
  }

  private spawnIn(ns: string, logName: string, argv: string[], env?: NodeJS.ProcessEnv): ChildProcess {
    const [cmd, ...rest] = argv;
    const log = createWriteStream(join(this.workDir, "logs", `${logName}.log`), { flags: "a" });
    const p = spawn("ip", ["netns", "exec", ns, cmd!, ...rest], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
    p.stdout!.pipe(log, { end: false });
    p.stderr!.pipe(log, { end: false });
    // 'close' comes after both pipes drained; only then may the file be closed.
    const closeLog = () => { if (!log.writableEnded) log.end(); };
    p.once("close", closeLog);
    p.once("error", closeLog);
    return p;
  }

  /** gRPC addresses of the lease servers, as agents get them. */
  get serverAddrs(): string[] {
    return Array.from({ length: this.opts.servers ?? 1 }, (_, i) => `${SERVER_IP}:${GRPC_PORT + 10 * i}`);
  }

  /** Starts the lease server(s); `backend` replaces the network config's Backend (a backend switch). */
  async startServer(backend = this.opts.backend): Promise<void> {
    const conf = join(this.workDir, "net-conf.json");
    writeFileSync(conf, JSON.stringify({ Network: this.opts.network ?? "10.244.0.0/16", Backend: backend ?? { Type: "vxlan" } }));
    if (this.opts.etcd && !this.etcd) await this.startEtcd();
    const store = this.opts.etcd ? ["--store", `etcd:${ETCD_URL}`] : ["--store", `sqlite:${join(this.workDir, "leases.db")}`];
    for (let i = 0; i < (this.opts.servers ?? 1); i++) await this.startServerAt(i, [...store, "--network-config", conf]);
  }

  /** Starts lease server `i` (port 7600 + 10 i, REST on 127.0.0.1:7601 + 10 i) and waits for its health. */
  async startServerAt(i: number, storeArgs?: string[]): Promise<void> {
    const args = storeArgs ?? ["--store", `etcd:${ETCD_URL}`];
    const tokenFile = join(this.workDir, "admin-token");
    writeFileSync(tokenFile, this.adminToken, { mode: 0o600 });
    const p = this.spawnIn(this.srv, i === 0 ? "lease-server" : `lease-server-${i}`, [...this.nodeCmd("server"),
      ...args, "--listen", `${SERVER_IP}:${GRPC_PORT + 10 * i}`,
      "--http-listen", `127.0.0.1:${7601 + 10 * i}`, "--admin-token-file", tokenFile, "--lease-ttl", this.opts.leaseTtl ?? "30s",
      // With TLS the servers keep their node CA (join tokens) in one state dir of the run: one CA for all.
      ...(this.opts.mtls ? ["--tls-cert", this.cert("server.crt"), "--tls-key", this.cert("server.key"), "--tls-client-ca", this.cert("ca.crt"), "--state-dir", join(this.workDir, "server-state")] : ["--insecure"])]);
    if (i === 0) this.server = p;
    else this.moreServers[i - 1] = p;
    await waitFor(`lease server ${i}`, async () => (await this.curl(this.srv, `http://127.0.0.1:${7601 + 10 * i}/healthz`)).code === 200, 20_000, 200);
  }

  /** etcd inside the server namespace, on its loopback. */
  private async startEtcd(): Promise<void> {
    this.etcd = this.spawnIn(this.srv, "etcd", ["etcd", "--name", "wft", "--data-dir", join(this.workDir, "etcd"),
      "--listen-client-urls", ETCD_URL, "--advertise-client-urls", ETCD_URL, "--listen-peer-urls", "http://127.0.0.1:2380",
      "--initial-advertise-peer-urls", "http://127.0.0.1:2380", "--initial-cluster", "wft=http://127.0.0.1:2380",
      "--heartbeat-interval", "50", "--election-timeout", "500", "--logger", "zap", "--log-level", "error"]);
    await waitFor("etcd", async () => (await this.curl(this.srv, `${ETCD_URL}/health`)).body.includes('"health":"true"'), 20_000, 200);
  }

  async stopServer(signal: NodeJS.Signals = "SIGTERM", i = 0): Promise<void> {
    if (i === 0) {
      await stopProcess(this.server, signal);
      this.server = undefined;
    } else {
      await stopProcess(this.moreServers[i - 1], signal);
      this.moreServers[i - 1] = undefined;
    }
  }

  /** certName: whose client certificate to present (default the node's own); { joinTokenFile }: join with that token instead. */
  startAgent(i: number, extra: string[] = [], env?: NodeJS.ProcessEnv, certName?: string | { joinTokenFile: string }): ChildProcess {
    const n = this.nodes[i]!;
    n.agent = this.spawnIn(n.ns, n.name, [...this.nodeCmd("agent"),
      "--server", this.serverAddrs.join(","), "--node-name", n.name, "--iface", "eth0", "--subnet-file", n.subnetFile,
      "--state-dir", n.stateDir, "--http-listen", `127.0.0.1:${AGENT_API_PORT}`,
      ...(!this.opts.mtls ? ["--insecure"]
        : typeof certName === "object" ? ["--tls-ca", this.cert("ca.crt"), "--join-token-file", certName.joinTokenFile]
        : ["--tls-ca", this.cert("ca.crt"), "--tls-cert", this.cert(`${certName ?? n.name}.crt`), "--tls-key", this.cert(`${certName ?? n.name}.key`)]),
      "--resync-interval", this.opts.resyncInterval ?? "2s", ...extra], env);
    return n.agent;
  }

  async stopAgent(i: number, signal: NodeJS.Signals = "SIGTERM"): Promise<number | null> {
    const n = this.nodes[i]!;
    const code = await stopProcess(n.agent, signal);
    n.agent = undefined;
    return code;
  }

  cert(file: string): string {
    return join(this.workDir, "certs", file);
  }

  /** A throwaway CA, a server certificate for SERVER_IP and one client certificate per node (CN = node name). */
  async makeCerts(): Promise<void> {
    const dir = join(this.workDir, "certs");
    mkdirSync(dir, { recursive: true });
    const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    await sh("openssl", ["req", "-x509", ...ec, "-keyout", join(dir, "ca.key"), "-out", join(dir, "ca.crt"), "-subj", "/CN=weft-test-ca", "-days", "1"]);
    const leaf = async (name: string, cn: string, san: string) => {
      await sh("openssl", ["req", "-new", ...ec, "-keyout", join(dir, `${name}.key`), "-out", join(dir, `${name}.csr`), "-subj", `/CN=${cn}`, "-addext", `subjectAltName=${san}`]);
      await sh("openssl", ["x509", "-req", "-in", join(dir, `${name}.csr`), "-CA", join(dir, "ca.crt"), "-CAkey", join(dir, "ca.key"), "-CAcreateserial",
        "-out", join(dir, `${name}.crt`), "-days", "1", "-copy_extensions", "copy"]);
    };
    await leaf("server", "weft-lease-server", `IP:${SERVER_IP}`);
    for (const n of this.nodes) await leaf(n.name, n.name, `DNS:${n.name}`);
  }

  /** POST /v1/join-tokens on lease server 0 (as an admin); the answer's token is written to a 0600 file. */
  async makeJoinToken(body: { ttl?: string; uses?: number }): Promise<{ token: string; id: string; file: string }> {
    const r = await sh("ip", ["netns", "exec", this.srv, "curl", "-s", "-m", "5", "-X", "POST", "-H", `Authorization: Bearer ${this.adminToken}`,
      "-H", "Content-Type: application/json", "-d", JSON.stringify(body), "http://127.0.0.1:7601/v1/join-tokens"]);
    const made = JSON.parse(r.stdout) as { token?: string; id?: string };
    if (!made.token || !made.id) throw new Error(`POST /v1/join-tokens did not answer a token: ${r.stdout}`);
    const file = join(this.workDir, `join-token-${made.id}`);
    writeFileSync(file, `${made.token}\n`, { mode: 0o600 });
    return { token: made.token, id: made.id, file };
  }

  async curl(ns: string, url: string): Promise<{ code: number; body: string }> {
    const r = await sh("ip", ["netns", "exec", ns, "curl", "-s", "-m", "2", "-w", "\n%{http_code}", url], { allowFail: true });
    const i = r.stdout.lastIndexOf("\n");
    return { code: Number(r.stdout.slice(i + 1)) || 0, body: r.stdout.slice(0, Math.max(0, i)) };
  }

  /** GET on lease server `i`'s REST API (in the server namespace). */
  async serverApi<T = unknown>(path: string, i = 0): Promise<{ code: number; json: T; body: string }> {
    const r = await this.curl(this.srv, `http://127.0.0.1:${7601 + 10 * i}${path}`);
    let json: T;
    try {
      json = JSON.parse(r.body) as T;
    } catch {
      json = undefined as T;
    }
    return { ...r, json };
  }

  async agentApi<T = unknown>(i: number, path: string): Promise<{ code: number; json: T; body: string }> {
    const r = await this.curl(this.nodes[i]!.ns, `http://127.0.0.1:${AGENT_API_PORT}${path}`);
    let json: unknown;
    try { json = JSON.parse(r.body); } catch { json = undefined; }
    return { code: r.code, json: json as T, body: r.body };
  }

  async waitReady(i: number, timeoutMs = 30_000): Promise<void> {
    await waitFor(`agent ${i} ready`, async () => (await this.agentApi(i, "/readyz")).code === 200, timeoutMs, 200);
  }

  /** Waits until agent i programs exactly `count` peers. */
  async waitPeers(i: number, count: number, timeoutMs = 30_000): Promise<void> {
    await waitFor(`agent ${i} with ${count} programmed peers`, async () => {
      const r = await this.agentApi<Array<{ programmed: boolean }>>(i, "/v1/peers");
      return r.code === 200 && r.json.length === count && r.json.every((p) => p.programmed);
    }, timeoutMs, 200);
  }

  subnetEnv(i: number): Record<string, string> {
    const out: Record<string, string> = {};
    for (const line of readFileSync(this.nodes[i]!.subnetFile, "utf8").split("\n")) {
      const m = /^([A-Z_]+)=(.*)$/.exec(line);
      if (m) out[m[1]!] = m[2]!;
    }
    return out;
  }

  /**
   * Creates a pod namespace and wires it with the CNI bridge plugin as Flannel's CNI plugin and
   * kube-flannel's conflist would: the bridge masquerades only when the agent does not
   * (ipMasq = !FLANNEL_IPMASQ), and the pod's default route is the bridge. `ipMasq` overrides.
   */
  async addPod(node: number, podIndex: number, opts: { ipMasq?: boolean } = {}): Promise<Pod> {
    const n = this.nodes[node]!;
    const env = this.subnetEnv(node);
    const ns = `${n.ns}-p${podIndex}`;
    await addNetns(ns);
    const [sip, len] = env.FLANNEL_SUBNET!.split("/");
    const o = sip!.split(".").map(Number);
    const subnet = `${o[0]}.${o[1]}.${o[2]}.${(o[3]! - 1)}/${len}`; // Flannel's CNI passes the network form
    const conf = {
      cniVersion: "1.0.0", name: "weft", type: "bridge", bridge: "cni0", isGateway: true, isDefaultGateway: true,
      ipMasq: opts.ipMasq ?? env.FLANNEL_IPMASQ !== "true", mtu: Number(env.FLANNEL_MTU),
      ipam: { type: "host-local", ranges: [[{ subnet }]], routes: [{ dst: env.FLANNEL_NETWORK }], dataDir: join(this.workDir, n.name, "cni") },
    };
    const r = await sh("ip", ["netns", "exec", n.ns, "/usr/lib/cni/bridge"], {
      input: JSON.stringify(conf),
      env: { ...process.env, CNI_COMMAND: "ADD", CNI_CONTAINERID: ns, CNI_NETNS: `/var/run/netns/${ns}`, CNI_IFNAME: "eth0", CNI_PATH: "/usr/lib/cni" },
    });
    const res = JSON.parse(r.stdout) as { ips: Array<{ address: string }> };
    const pod = { ns, node, ip: res.ips[0]!.address.split("/")[0]! };
    this.pods.push(pod);
    return pod;
  }

  /** An HTTP server in `ns` that answers each request with the client address it sees (masquerade checks). */
  async startWhoami(ns: string, ip: string, port = 8080): Promise<void> {
    const code = `require("http").createServer((q, r) => r.end(q.socket.remoteAddress.replace(/^::ffff:/, ""))).listen(${port}, "${ip}")`;
    this.spawnIn(ns, `whoami-${ns.replace(this.prefix, "")}`, [process.execPath, "-e", code]);
    await waitFor(`whoami server in ${ns}`, async () => (await this.curl(ns, `http://${ip}:${port}/`)).code === 200, 10_000, 100);
  }

  /** The address `to`'s whoami server saw for a request from `fromNs`, or undefined when unreachable. */
  async whoami(fromNs: string, to: string, port = 8080): Promise<string | undefined> {
    const r = await this.curl(fromNs, `http://${to}:${port}/`);
    return r.code === 200 ? r.body : undefined;
  }

  async ping(from: Pod, to: string, count = 1): Promise<boolean> {
    const r = await sh("ip", ["netns", "exec", from.ns, "ping", "-c", String(count), "-W", "1", "-i", "0.2", to], { allowFail: true });
    return r.code === 0;
  }

  async destroy(): Promise<void> {
    for (const n of this.nodes) await stopProcess(n.agent, "SIGKILL");
    await stopProcess(this.server, "SIGKILL");
    for (const p of this.moreServers) await stopProcess(p, "SIGKILL");
    await stopProcess(this.etcd, "SIGKILL");
    await cleanupNetns(this.prefix);
    if (!process.env.WEFT_KEEP_LOGS) rmSync(this.workDir, { recursive: true, force: true });
  }

  logPath(name: string): string {
    return join(this.workDir, "logs", `${name}.log`);
  }
}

/** The dist/ build the default runner uses must be at least as new as the sources (npm test builds it first). */
export function assertBuilt(): void {
  const built = join(ROOT, "dist/node-agent/src/main.js");
  if (!existsSync(built)) throw new Error("dist/ is missing: run npm run build (npm test does it for you)");
  const newest = (dir: string): number => Math.max(0, ...readdirSync(dir, { withFileTypes: true }).map((e) =>
    e.isDirectory() ? newest(join(dir, e.name)) : e.name.endsWith(".ts") ? statSync(join(dir, e.name)).mtimeMs : 0));
  const src = Math.max(...["lib/src", "lease-server/src", "node-agent/src"].map((d) => newest(join(ROOT, d))));
  if (statSync(built).mtimeMs < src) throw new Error("dist/ is older than the sources: run npm run build (npm test does it for you)");
}

/** The words of a script's `#!/usr/bin/env -S VAR=value node --flag ...` line, split at `node`. */
function shebang(script: string): { before: string[]; after: string[] } {
  const first = readFileSync(script, "utf8").split("\n", 1)[0] ?? "";
  if (!first.startsWith("#!")) return { before: [], after: [] };
  const words = first.slice(2).trim().split(/\s+/);
  const node = words.findIndex((w) => w === "node" || w.endsWith("/node"));
  return node < 0 ? { before: [], after: [] } : { before: words.slice(0, node), after: words.slice(node + 1) };
}

/** The node flags in a script's `#!/usr/bin/env -S node --flag ...` line. */
export function shebangNodeFlags(script: string): string[] {
  return shebang(script).after.filter((w) => w.startsWith("--"));
}

/** The `VAR=value` settings in a script's `#!/usr/bin/env -S VAR=value node ...` line. */
export function shebangEnv(script: string): string[] {
  return shebang(script).before.filter((w) => /^[A-Z_][A-Z0-9_]*=/.test(w));
}

/** How a runner starts `script` as its `#!` line would: its environment settings, node, its flags. */
export function shebangCommand(script: string, flags = shebangNodeFlags(script)): string[] {
  const env = shebangEnv(script);
  return [...(env.length ? ["/usr/bin/env", ...env] : []), process.execPath, ...flags];
}

export function stopProcess(p: ChildProcess | undefined, signal: NodeJS.Signals): Promise<number | null> {
  if (!p || p.exitCode !== null || p.signalCode !== null) return Promise.resolve(p?.exitCode ?? null);
  return new Promise((resolve) => {
    const t = setTimeout(() => p.kill("SIGKILL"), 10_000);
    p.once("exit", (code) => { clearTimeout(t); resolve(code); });
    p.kill(signal);
  });
}
