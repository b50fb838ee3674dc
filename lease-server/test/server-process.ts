// Runs bin/weft-lease-server as a real child process and talks to it over
// real gRPC on 127.0.0.1.
import { spawn, type ChildProcess } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { LeaseServiceClient, type Lease as PbLease, type WatchLeasesResponse } from "../../gen/weft/v1/lease.js";

export const BIN = join(import.meta.dirname, "../../bin/weft-lease-server");

export interface ServerProcess {
  readonly proc: ChildProcess;
  readonly grpcAddr: string;
  readonly httpUrl: string;
  readonly output: () => string;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export function writeNetConf(dir: string, conf: unknown = { Network: "10.244.0.0/16", Backend: { Type: "vxlan" } }): string {
  const path = join(dir, "net-conf.json");
  writeFileSync(path, typeof conf === "string" ? conf : JSON.stringify(conf));
  return path;
}

/**
 * Runs the server under another command, e.g. in a private mount namespace:
 * gets the server's argv (node, BIN, flags) and returns the command to spawn.
 */
export type Wrap = (argv: string[]) => [string, string[]];
const direct: Wrap = ([cmd, ...rest]) => [cmd!, rest];

export interface Finished { code: number | null; stdout: string; stderr: string }

/** Runs a command to completion, collecting its output; killed after `timeoutMs`. */
export function runToEnd(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<Finished> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], ...(opts.env ? { env: opts.env } : {}) });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d) => (stdout += d));
    p.stderr.on("data", (d) => (stderr += d));
    const t = setTimeout(() => p.kill("SIGKILL"), opts.timeoutMs ?? 15_000);
    p.on("exit", (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Runs the binary to completion (for flag/config errors). */
export function runBin(args: string[], wrap: Wrap = direct): Promise<Finished> {
  return runToEnd(...wrap([process.execPath, BIN, ...args]));
}

export async function startServer(args: string[], wrap: Wrap = direct): Promise<ServerProcess> {
  const proc = spawn(...wrap([process.execPath, BIN, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", ...args]), { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  const ports = await new Promise<{ grpc: string; http: string }>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`lease server did not start in 15 s:\n${out}`)), 15_000);
    const onData = (d: Buffer) => {
      out += d;
      for (const line of out.split("\n")) {
        if (!line.includes('"lease server listening"')) continue;
        const j = JSON.parse(line) as { grpc: string; http: string };
        clearTimeout(t);
        resolve(j);
        return;
      }
    };
    proc.stdout!.on("data", onData);
    proc.stderr!.on("data", (d) => (out += d));
    proc.on("exit", (code) => reject(new Error(`lease server exited (${code}) before listening:\n${out}`)));
  });
  return {
    proc,
    grpcAddr: ports.grpc,
    httpUrl: `http://${ports.http}`,
    output: () => out,
    stop: (signal = "SIGTERM") => new Promise((resolve) => {
      if (proc.exitCode !== null || proc.signalCode !== null) return resolve(proc.exitCode);
      proc.once("exit", (code) => resolve(code));
      proc.kill(signal);
    }),
  };
}

export type Call = <T = PbLease>(method: "getNetworkConfig" | "acquireLease" | "renewLease" | "releaseLease", req: unknown) => Promise<T>;

export function connect(addr: string, creds = grpc.credentials.createInsecure(), options: grpc.ClientOptions = {}): { client: LeaseServiceClient; call: Call } {
  const client = new LeaseServiceClient(addr, creds, options);
  const call: Call = (method, req) => new Promise((resolve, reject) => {
    (client[method] as (r: unknown, cb: (e: grpc.ServiceError | null, v: unknown) => void) => void)(req, (e, v) => (e ? reject(e) : resolve(v as never)));
  });
  return { client, call };
}

export const vxlanReq = (n: number, nodeName = `node-${n}`) => ({
  nodeName, publicIp: `198.18.${(n >> 8) & 255}.${n & 255 || 1}`, vxlan: { vni: 1, vtepMac: `0e:00:00:00:${((n >> 8) & 255).toString(16).padStart(2, "0")}:${(n & 255).toString(16).padStart(2, "0")}` },
});

/** Collects WatchLeases messages. */
export function watch(client: LeaseServiceClient, fromRevision: number, storeId = "") {
  const messages: WatchLeasesResponse[] = [];
  const stream = client.watchLeases({ fromRevision, storeId });
  let error: grpc.ServiceError | undefined;
  stream.on("data", (m: WatchLeasesResponse) => messages.push(m));
  stream.on("error", (e: grpc.ServiceError) => (error = e));
  return { messages, stream, error: () => error };
}
