// Real etcd processes for tests, on loopback with free ports.
//
//   describe.skipIf(!etcdAvailable())("...", () => {
//     let etcd: EtcdProcess;
//     beforeAll(async () => { etcd = await startEtcd(); });
//     afterAll(() => etcd?.stop());
//     ...new Etcd3({ hosts: etcd.endpoints })
//   });
//
// Every etcd started here is killed (SIGKILL) and its data dir removed when
// the test process exits, also on SIGINT/SIGTERM/SIGHUP. Where setpriv
// (util-linux) exists, etcd also runs with a parent-death signal, so it dies
// even when the test process itself is SIGKILLed.
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { rmSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { findBin, requireOrSkip } from "./tools.js";

const HOST = "127.0.0.1";
const HEALTH_TIMEOUT_MS = 15_000;
const KILL_GRACE_MS = 5_000;
const START_ATTEMPTS = 5; // a port picked free can be taken before etcd binds it
const STDERR_KEEP = 64 * 1024;
const STDERR_TAIL_LINES = 30;

export interface EtcdProcess {
  readonly name: string;
  /** Client URLs, e.g. ["http://127.0.0.1:40123"]. */
  readonly endpoints: string[];
  readonly peerUrl: string;
  readonly dataDir: string;
  /** pid of the current etcd process (a restart() changes it). */
  readonly pid: number;
  /** True while the etcd process has not exited. */
  readonly running: boolean;
  /**
   * Sends `signal` (default SIGTERM) and resolves once the process is gone;
   * escalates to SIGKILL after 5 s. SIGSTOP/SIGTSTP/SIGCONT resolve at once.
   * No-op when it is not running. The data dir is kept: restart() reuses it.
   */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /**
   * Runs etcd again with the same flags, ports and data dir (SIGKILLs it
   * first if still running). Waits for /health unless `waitHealthy: false`
   * (a member restarted while its cluster has no quorum cannot be healthy).
   */
  restart(opts?: { waitHealthy?: boolean }): Promise<void>;
  /** SIGKILL and remove the data dir. Idempotent. */
  stop(): Promise<void>;
  /** Resolves once GET /health says {"health":"true"}; throws with etcd's stderr tail on timeout or exit. */
  waitHealthy(timeoutMs?: number): Promise<void>;
  /** The last lines etcd wrote to stderr (logs are at level error). */
  stderrTail(): string;
}

export interface EtcdCluster {
  /** All members' client URLs. */
  readonly endpoints: string[];
  readonly members: EtcdProcess[];
  /**
   * The running member that is the raft leader, by asking each running member
   * (POST /v3/maintenance/status); undefined while there is none (e.g. during
   * an election after the leader was killed).
   */
  leader(): Promise<EtcdProcess | undefined>;
  /** Stops every member and removes their data dirs. Idempotent. */
  stop(): Promise<void>;
}

let available: boolean | undefined;

/**
 * Whether the etcd binary is on PATH. Locally a missing etcd skips visibly; in
 * CI (CI=true) it throws, failing the test file. Use as
 * `describe.skipIf(!etcdAvailable())(...)`.
 */
export function etcdAvailable(): boolean {
  if (available === undefined) {
    available = requireOrSkip(findBin("etcd") ? [] : ["etcd (apt-get install etcd-server etcd-client)"], "the etcd test");
  }
  return available;
}

// ---- tracking and cleanup on exit ------------------------------------------

const live = new Set<Member>();
/** Ports held by members that are not stopped (a killed member keeps its ports for restart()). */
const reservedPorts = new Set<number>();
let cleanupInstalled = false;

function killAllSync(): void {
  for (const m of live) m.killSync();
}

function installCleanup(): void {
  if (cleanupInstalled) return;
  cleanupInstalled = true;
  process.on("exit", killAllSync);
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    const onSignal = (): void => {
      killAllSync();
      // If nobody else handles this signal, restore its default (terminate).
      if (process.listenerCount(sig) === 1) {
        process.removeListener(sig, onSignal);
        process.kill(process.pid, sig);
      }
    };
    process.on(sig, onSignal);
  }
}

// ---- ports ------------------------------------------------------------------

function listenEphemeral(): Promise<Server> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once("error", reject);
    srv.listen({ host: HOST, port: 0, exclusive: true }, () => resolve(srv));
  });
}

/** `n` distinct ports that were free a moment ago (bound together, then released). */
async function freePorts(n: number): Promise<number[]> {
  const servers: Server[] = [];
  try {
    const ports: number[] = [];
    while (ports.length < n) {
      const srv = await listenEphemeral();
      servers.push(srv); // keep it bound so the next listen gets another port
      const { port } = srv.address() as { port: number };
      if (!reservedPorts.has(port)) ports.push(port);
    }
    return ports;
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
  }
}

// ---- one member ---------------------------------------------------------------

class EtcdStartError extends Error {
  constructor(
    message: string,
    readonly addrInUse: boolean,
  ) {
    super(message);
  }
}

function etcdEnv(): NodeJS.ProcessEnv {
  // ETCD_* variables would override or conflict with our flags.
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("ETCD_")));
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

interface MemberSpec {
  name: string;
  clientPort: number;
  peerPort: number;
  initialCluster: string;
  token: string;
}

class Member implements EtcdProcess {
  readonly name: string;
  readonly endpoints: string[];
  readonly peerUrl: string;
  readonly dataDir: string;
  private readonly ports: number[];
  private readonly args: string[];
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private exitInfo: string | undefined = "not started";
  private stderr = "";
  private stopping: Promise<void> | undefined;

  private constructor(
    spec: MemberSpec,
    private readonly baseDir: string,
  ) {
    this.name = spec.name;
    const clientUrl = `http://${HOST}:${spec.clientPort}`;
    this.endpoints = [clientUrl];
    this.peerUrl = `http://${HOST}:${spec.peerPort}`;
    this.dataDir = join(baseDir, `${spec.name}.etcd`);
    this.ports = [spec.clientPort, spec.peerPort];
    for (const p of this.ports) reservedPorts.add(p);
    this.args = [
      "--name", spec.name,
      "--data-dir", this.dataDir,
      "--listen-client-urls", clientUrl,
      "--advertise-client-urls", clientUrl,
      "--listen-peer-urls", this.peerUrl,
      "--initial-advertise-peer-urls", this.peerUrl,
      "--initial-cluster", spec.initialCluster,
      "--initial-cluster-token", spec.token,
      "--initial-cluster-state", "new",
      "--heartbeat-interval", "50",
      "--election-timeout", "500",
      "--snapshot-count", "5000",
      "--quota-backend-bytes", String(64 * 1024 * 1024),
      "--max-request-bytes", String(1536 * 1024),
      "--logger", "zap",
      "--log-outputs", "stderr",
      "--log-level", "error",
    ];
  }

  static async create(spec: MemberSpec): Promise<Member> {
    const baseDir = await mkdtemp(join(tmpdir(), "weft-etcd-"));
    const m = new Member(spec, baseDir);
    live.add(m); // tracked from here on: its dir is removed on exit even if spawn fails
    return m;
  }

  get pid(): number {
    return this.child?.pid ?? -1;
  }

  get running(): boolean {
    return this.child !== undefined && this.exitInfo === undefined;
  }

  stderrTail(): string {
    return this.stderr.trimEnd().split("\n").slice(-STDERR_TAIL_LINES).join("\n");
  }

  spawn(): void {
    if (this.stopping) throw new Error(`etcd ${this.name} was stopped`);
    if (this.running) throw new Error(`etcd ${this.name} is already running (pid ${this.pid})`);
    const etcd = findBin("etcd");
    if (!etcd) throw new Error("etcd is not on PATH (apt-get install etcd-server etcd-client)");
    installCleanup();
    const setpriv = findBin("setpriv");
    // setpriv execs etcd, so the pid is etcd's; the parent-death signal kills
    // it if this process dies without running its exit handlers.
    const [cmd, argv] = setpriv ? [setpriv, ["--pdeathsig", "KILL", "--", etcd, ...this.args]] : [etcd, this.args];
    this.stderr = "";
    this.exitInfo = undefined;
    const child = spawn(cmd, argv, { stdio: ["ignore", "ignore", "pipe"], env: etcdEnv() });
    this.child = child;
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (chunk: string) => {
      this.stderr += chunk;
      if (this.stderr.length > STDERR_KEEP) this.stderr = this.stderr.slice(-STDERR_KEEP);
    });
    this.exited = new Promise<void>((resolve) => {
      child.once("error", (err) => {
        this.exitInfo ??= `failed to start: ${err.message}`;
        resolve();
      });
      child.once("exit", (code, signal) => {
        this.exitInfo ??= signal ? `killed by ${signal}` : `exited with code ${code}`;
        resolve();
      });
    });
  }

  async waitHealthy(timeoutMs = HEALTH_TIMEOUT_MS): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const url = `${this.endpoints[0]}/health`;
    let last = "no answer yet";
    for (;;) {
      if (!this.running) {
        await sleep(50); // let the last stderr lines arrive
        const tail = this.stderrTail();
        throw new EtcdStartError(
          `etcd ${this.name} ${this.exitInfo} before it was healthy; stderr:\n${tail || "(empty)"}`,
          /address already in use/i.test(tail),
        );
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new EtcdStartError(
          `etcd ${this.name} (${this.endpoints[0]}, pid ${this.pid}) not healthy within ${timeoutMs} ms (last: ${last}); stderr:\n${this.stderrTail() || "(empty)"}`,
          false,
        );
      }
      try {
        const res = await fetch(url, { signal: AbortSignal.timeout(Math.min(1_000, left)) });
        const body = await res.text();
        last = `HTTP ${res.status} ${body.trim()}`;
        if (res.ok && (JSON.parse(body) as { health?: unknown }).health === "true") return;
      } catch (err) {
        last = (err as Error & { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
      }
      await Promise.race([sleep(100), this.exited]);
    }
  }

  async kill(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    const child = this.child;
    if (!child || !this.running) return;
    child.kill(signal);
    if (signal === "SIGSTOP" || signal === "SIGTSTP" || signal === "SIGCONT") return;
    if (signal !== "SIGKILL") child.kill("SIGCONT"); // a stopped process must run to handle it
    const timer = sleep(KILL_GRACE_MS).then(() => "timeout" as const);
    if ((await Promise.race([this.exited.then(() => "exited" as const), timer])) === "timeout") {
      child.kill("SIGKILL");
      await this.exited;
    }
  }

  async restart(opts: { waitHealthy?: boolean } = {}): Promise<void> {
    if (this.stopping) throw new Error(`etcd ${this.name} was stopped; its data dir is gone`);
    await this.kill("SIGKILL");
    this.spawn();
    if (opts.waitHealthy !== false) await this.waitHealthy();
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      await this.kill("SIGKILL");
      await rm(this.baseDir, { recursive: true, force: true });
      for (const p of this.ports) reservedPorts.delete(p);
      live.delete(this);
    })();
    return this.stopping;
  }

  /** For exit handlers: SIGKILL without waiting, remove the data dir. */
  killSync(): void {
    if (this.running && this.child?.pid) {
      try {
        process.kill(this.child.pid, "SIGKILL");
      } catch {
        /* already gone */
      }
    }
    try {
      rmSync(this.baseDir, { recursive: true, force: true });
    } catch {
      /* best effort */
    }
  }
}

// ---- public API -----------------------------------------------------------------

function newToken(): string {
  return `weft-test-${process.pid}-${randomBytes(6).toString("hex")}`;
}

async function startMembers(names: string[]): Promise<Member[]> {
  for (let attempt = 1; ; attempt++) {
    const ports = await freePorts(2 * names.length);
    const peers = names.map((name, i) => ({ name, clientPort: ports[2 * i], peerPort: ports[2 * i + 1] }));
    const initialCluster = peers.map((p) => `${p.name}=http://${HOST}:${p.peerPort}`).join(",");
    const token = newToken();
    const members: Member[] = [];
    try {
      for (const p of peers) members.push(await Member.create({ ...p, initialCluster, token }));
      for (const m of members) m.spawn();
      await Promise.all(members.map((m) => m.waitHealthy()));
      return members;
    } catch (err) {
      await Promise.all(members.map((m) => m.stop()));
      if (err instanceof EtcdStartError && err.addrInUse && attempt < START_ATTEMPTS) continue;
      throw err;
    }
  }
}

/** One etcd member on 127.0.0.1 with free ports, healthy when this resolves. */
export async function startEtcd(opts: { name?: string } = {}): Promise<EtcdProcess> {
  const [m] = await startMembers([opts.name ?? "weft-test"]);
  return m;
}

async function isLeader(m: EtcdProcess): Promise<boolean> {
  try {
    const res = await fetch(`${m.endpoints[0]}/v3/maintenance/status`, { method: "POST", body: "{}", signal: AbortSignal.timeout(1_000) });
    if (!res.ok) return false;
    const st = (await res.json()) as { header?: { member_id?: string }; leader?: string };
    return !!st.leader && st.leader !== "0" && st.leader === st.header?.member_id;
  } catch {
    return false;
  }
}

/** `n` etcd members forming one cluster on 127.0.0.1, all healthy when this resolves. */
export async function startEtcdCluster(n = 3): Promise<EtcdCluster> {
  if (!Number.isInteger(n) || n < 1) throw new Error(`startEtcdCluster: n must be a positive integer, got ${n}`);
  const members = await startMembers(Array.from({ length: n }, (_, i) => `m${i}`));
  let stopping: Promise<void> | undefined;
  return {
    endpoints: members.flatMap((m) => m.endpoints),
    members,
    async leader() {
      const running = members.filter((m) => m.running);
      const flags = await Promise.all(running.map(isLeader));
      return running.find((_, i) => flags[i]);
    },
    stop: () => (stopping ??= Promise.all(members.map((m) => m.stop())).then(() => undefined)),
  };
}
