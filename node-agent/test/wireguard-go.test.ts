// Starting wireguard-go: what the agent says when it is missing or fails, and
// that it is started once, as a daemon. The program is a stand-in script; the
// real wireguard-go runs in the WireGuard e2e test.
import { chmodSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { WireguardGo } from "../src/wireguard/wireguard-go.js";
import { FakeWgControl } from "./helpers/fake-wg-control.js";
import { silentLog, tmpDir } from "./helpers/fixtures.js";

/** A control whose device "answers" once `ready()` says so. */
class GatedControl extends FakeWgControl {
  constructor(private readonly ready: () => boolean) {
    super("userspace");
  }
  override async get() {
    if (!this.ready()) throw new Error("no socket");
    return super.get();
  }
}

function script(dir: string, body: string): string {
  const p = join(dir, "fake-wireguard-go");
  writeFileSync(p, `#!/bin/sh\n${body}\n`);
  chmodSync(p, 0o755);
  return p;
}

const make = (dir: string, ready: () => boolean, bin: string) =>
  new WireguardGo({ device: "wgt0", control: new GatedControl(ready), logFile: join(dir, "wg.log"), log: silentLog, bin });

describe("wireguard-go launcher", () => {
  it("says how to install wireguard-go when it is missing", async () => {
    const dir = tmpDir();
    await expect(make(dir, () => false, join(dir, "nope")).ensureRunning())
      .rejects.toMatchObject({ code: "CONFIG_INVALID", message: expect.stringMatching(/not installed.*apt-get install wireguard-go/) });
  });

  it("reports a failed start with the end of its log", async () => {
    const dir = tmpDir();
    const bin = script(dir, 'echo "UAPI listen error: address already in use" >&2; exit 1');
    await expect(make(dir, () => false, bin).ensureRunning())
      .rejects.toMatchObject({ code: "DATAPLANE_OP_FAILED", message: expect.stringMatching(/failed to start \(exit code 1\).*UAPI listen error: address already in use/) });
  });

  it("starts it once, as a daemon (no -f, no WG_PROCESS_FOREGROUND), for concurrent callers, and adopts it after", async () => {
    const dir = tmpDir();
    const marker = join(dir, "started");
    let up = false;
    const bin = script(dir, `echo "$@ fg=$WG_PROCESS_FOREGROUND log=$LOG_LEVEL" >> ${marker}; sleep 0.2; exit 0`);
    const w = make(dir, () => up, bin);
    setTimeout(() => (up = true), 150);
    process.env.WG_PROCESS_FOREGROUND = "1";
    try {
      expect(await Promise.all([w.ensureRunning(), w.ensureRunning()])).toEqual(["started", "started"]);
    } finally {
      delete process.env.WG_PROCESS_FOREGROUND;
    }
    expect(readFileSync(marker, "utf8").trim().split("\n")).toEqual(["wgt0 fg= log=error"]);
    expect(await w.ensureRunning()).toBe("running");
  });

  it("fails when the launcher succeeds but the device does not answer", async () => {
    const dir = tmpDir();
    await expect(make(dir, () => false, script(dir, "exit 0")).ensureRunning()).rejects.toThrow(/started but its UAPI socket does not answer/);
  });
});
