// Runs wireguard-go, the userspace WireGuard, for one device when the kernel
// has no WireGuard. It is started detached, in its own session and with its
// output in a file: an agent restart (or crash) must not take the tunnel down,
// so the next agent finds it running and adopts it. The agent that started it
// hears when it dies; any agent notices through the vanished device.
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
  /** Called when a wireguard-go this agent started exits. */
  readonly onExit: () => void;
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
    let exited: string | undefined;
    let up = false;
    try {
      const child = spawn(bin, ["-f", device], {
        detached: true, stdio: ["ignore", out, out],
        // Only errors: its log is a file nobody rotates.
        env: { ...process.env, LOG_LEVEL: process.env.LOG_LEVEL ?? "error", WG_PROCESS_FOREGROUND: "1" },
      });
      child.unref();
      child.once("error", (err: NodeJS.ErrnoException) => {
        exited = err.code === "ENOENT"
          ? `${bin} is not installed; this kernel has no WireGuard, so weft needs wireguard-go: apt-get install wireguard-go (or load the wireguard kernel module)`
          : `cannot start ${bin}: ${err.message}`;
      });
      child.once("exit", (code, signal) => {
        exited ??= `${bin} exited (${signal ?? `code ${code}`}) right after starting`;
        if (!up) return; // start() reports it; the next resync tries again (no restart loop)
        log.warn({ device, pid: child.pid, code, signal }, "wireguard-go exited; the device is gone and will be set up again");
        this.o.onExit();
      });
      log.info({ device, pid: child.pid, logFile }, "started wireguard-go (the kernel has no WireGuard)");
    } finally {
      closeSync(out);
    }
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (exited) throw new WeftError(exited.includes("not installed") ? "CONFIG_INVALID" : "DATAPLANE_OP_FAILED", `wireguard ${device}: ${exited}${this.lastLines()}`);
      if (await this.answers()) {
        up = true;
        return "started";
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new WeftError("DATAPLANE_OP_FAILED", `wireguard ${device}: wireguard-go started but its UAPI socket did not answer within ${START_TIMEOUT_MS} ms${this.lastLines()}`);
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
