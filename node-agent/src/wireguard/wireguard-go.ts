// Runs wireguard-go, the userspace WireGuard, for one device when the kernel
// has no WireGuard. It runs as its own daemon, in a session of its own and
// with its output in a file: an agent restart (or crash) must not take the
// tunnel down, so the next agent finds it running and adopts it. When it dies
// its device goes too, which the agent hears from the kernel (or sees on its
// next resync) and answers by starting it again.
//
// Daemon mode rather than -f: wireguard-go then hands its child a non-blocking
// TUN descriptor, and measured ~20% more throughput than in the foreground
// (docs/benchmarks.md). Its launcher exits once the TUN device and the UAPI
// socket exist, with a non-zero code and a message if they could not be made.
import { spawn } from "node:child_process";
import { closeSync, mkdirSync, openSync, readFileSync } from "node:fs";
import { dirname } from "node:path";
import { WeftError } from "../../../lib/src/errors.js";
import type { Logger } from "../../../lib/src/logger.js";
import type { WgControl } from "./control.js";

const START_TIMEOUT_MS = 5000;

export interface WireguardGoOptions {
  readonly device: string;
  /** The device's UAPI: answers once wireguard-go is up. */
  readonly control: WgControl;
  /** wireguard-go's output (appended). */
  readonly logFile: string;
  readonly log: Logger;
  readonly bin?: string;
}

export class WireguardGo {
  private starting: Promise<"started" | "running"> | undefined;

  constructor(private readonly o: WireguardGoOptions) {}

  /** Starts wireguard-go unless the device's UAPI answers already. */
  ensureRunning(): Promise<"started" | "running"> {
    this.starting ??= this.start().finally(() => (this.starting = undefined));
    return this.starting;
  }

  private async answers(): Promise<boolean> {
    return this.o.control.get().then(() => true, () => false);
  }

  private async start(): Promise<"started" | "running"> {
    if (await this.answers()) return "running";
    const { device, log, logFile } = this.o;
    const bin = this.o.bin ?? "wireguard-go";
    mkdirSync(dirname(logFile), { recursive: true, mode: 0o700 });
    const out = openSync(logFile, "a", 0o600);
    let launched: Promise<string | undefined>;
    try {
      // Without WG_PROCESS_FOREGROUND (it would keep the launcher in the foreground); errors only, into a file nobody rotates.
      const { WG_PROCESS_FOREGROUND: _, ...env } = process.env;
      const launcher = spawn(bin, [device], { detached: true, stdio: ["ignore", out, out], env: { ...env, LOG_LEVEL: env.LOG_LEVEL ?? "error" } });
      launcher.unref();
      launched = new Promise((resolve) => {
        launcher.once("error", (err: NodeJS.ErrnoException) => resolve(err.code === "ENOENT"
          ? `${bin} is not installed; this kernel has no WireGuard, so weft needs wireguard-go: apt-get install wireguard-go (or load the wireguard kernel module)`
          : `cannot start ${bin}: ${err.message}`));
        launcher.once("exit", (code, signal) => resolve(code === 0 ? undefined : `${bin} failed to start (${signal ?? `exit code ${code}`})`));
      });
    } finally {
      closeSync(out);
    }
    const timeout = new Promise<string>((resolve) => setTimeout(() => resolve(`${bin} did not finish starting within ${START_TIMEOUT_MS} ms`), START_TIMEOUT_MS).unref());
    const failed = await Promise.race([launched, timeout]);
    if (failed) throw new WeftError(failed.includes("not installed") ? "CONFIG_INVALID" : "DATAPLANE_OP_FAILED", `wireguard ${device}: ${failed}${this.lastLines()}`);
    if (!(await this.answers())) throw new WeftError("DATAPLANE_OP_FAILED", `wireguard ${device}: wireguard-go started but its UAPI socket does not answer${this.lastLines()}`);
    log.info({ device, logFile }, "started wireguard-go (the kernel has no WireGuard)");
    return "started";
  }

  /** The end of wireguard-go's log, for the error that says why it did not come up. */
  private lastLines(): string {
    try {
      const lines = readFileSync(this.o.logFile, "utf8").trim().split("\n").slice(-3).join(" | ");
      return lines ? ` (its log ${this.o.logFile} ends: ${lines})` : "";
    } catch {
      return "";
    }
  }
}
