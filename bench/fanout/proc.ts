// Processes and /proc: what the fan-out bench reads about the machine and the
// processes it starts, and how it starts, drains and stops them. Every child
// and temp dir registered here is removed by killAll(), also on failure.
import { execFileSync, type ChildProcess } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (this file runs as dist/bench/fanout/proc.js). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
export const now = (): number => performance.timeOrigin + performance.now();
export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
export const MiB = 1024 * 1024;

export function rssBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** utime + stime of a process in seconds (CLK_TCK = 100 on Linux). */
export function cpuSeconds(pid: number): number {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return 0;
  }
}

/** Busy and total jiffies of the whole machine (all cores), from /proc/stat. */
export function systemCpu(): { busy: number; total: number } {
  try {
    const f = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
    const total = f.reduce((a, b) => a + b, 0);
    return { busy: total - f[3]! - (f[4] ?? 0), total };
  } catch {
    return { busy: 0, total: 0 };
  }
}

export function fdLimit(): number {
  try {
    const m = /Max open files\s+(\d+|unlimited)/.exec(readFileSync("/proc/self/limits", "utf8"));
    return !m || m[1] === "unlimited" ? Infinity : Number(m[1]);
  } catch {
    return Infinity;
  }
}

export function fdHardLimit(): number {
  try {
    const m = /Max open files\s+(?:\d+|unlimited)\s+(\d+|unlimited)/.exec(readFileSync("/proc/self/limits", "utf8"));
    return !m || m[1] === "unlimited" ? Infinity : Number(m[1]);
  } catch {
    return Infinity;
  }
}

/**
 * The server holds one socket per watcher, and a watcher process one per watcher of its share: raise this
 * process's open-file limit (prlimit on our own pid) before any child starts, so every child inherits it.
 * Up to the hard limit, or past it as root. Returns the limit in force afterwards.
 */
export function raiseFileLimit(need: number, log: (s: string) => void): number {
  const have = fdLimit();
  if (have >= need) return have;
  const hard = fdHardLimit();
  const to = hard >= need ? hard : Math.max(need, 65_536);
  try {
    execFileSync("prlimit", ["--pid", String(process.pid), `--nofile=${to}:${Math.max(to, hard)}`], { stdio: "ignore" });
    log(`raised the open-file limit from ${have} to ${fdLimit()} (prlimit --pid ${process.pid} --nofile=${to}:${Math.max(to, hard)}); the server and watcher processes inherit it`);
  } catch (err) {
    log(`could not raise the open-file limit (${have}, hard ${hard}) to ${to}: ${(err as Error).message}`);
  }
  return fdLimit();
}

export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number };
      s.close(() => res(port));
    });
  });
}

export const children = new Set<ChildProcess>();
export const tempDirs = new Set<string>();

export function killAll(): void {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  }
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
  tempDirs.clear();
}

export async function stopChild(c: ChildProcess, graceMs = 3000): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return;
  const exited = new Promise<void>((r) => c.once("exit", () => r()));
  c.kill("SIGTERM");
  const t = setTimeout(() => c.kill("SIGKILL"), graceMs);
  await exited;
  clearTimeout(t);
  children.delete(c);
}

/** Keeps the child's output drained; returns the last lines for error messages. */
export function drainLines(c: ChildProcess, onLine: (line: string) => void, verbose: boolean): string[] {
  const tail: string[] = [];
  for (const s of [c.stdout, c.stderr]) {
    let buf = "";
    s?.setEncoding("utf8");
    s?.on("data", (d: string) => {
      if (verbose) process.stderr.write(d);
      buf += d;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        tail.push(line);
        if (tail.length > 30) tail.shift();
        onLine(line);
      }
    });
  }
  return tail;
}
