// Starting wireguard-go: what the agent says when it is missing or dies at
// once, and that it is not started twice. The program is a stand-in script;
// the real wireguard-go runs in the WireGuard e2e test.
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

describe("wireguard-go supervisor", () => {
  it("says how to install wireguard-go when it is missing", async () => {
    const dir = tmpDir();
    const w = new WireguardGo({ device: "wgt0", control: new GatedControl(() => false), logFile: join(dir, "wg.log"), log: silentLog, onExit: () => {}, bin: join(dir, "nope") });
    await expect(w.ensureRunning()).rejects.toMatchObject({ code: "CONFIG_INVALID", message: expect.stringMatching(/not installed.*apt-get install wireguard-go/) });
  });

  it("reports an immediate exit with the end of its log, and does not ask for a repair loop", async () => {
    const dir = tmpDir();
    let exits = 0;
    const bin = script(dir, 'echo "UAPI listen error: address already in use" >&2; exit 1');
    const w = new WireguardGo({ device: "wgt0", control: new GatedControl(() => false), logFile: join(dir, "wg.log"), log: silentLog, onExit: () => exits++, bin });
    await expect(w.ensureRunning()).rejects.toMatchObject({ code: "DATAPLANE_OP_FAILED", message: expect.stringMatching(/exited \(code 1\).*UAPI listen error: address already in use/) });
    expect(exits).toBe(0);
  });

  it("does nothing when the device answers already, starts it once for concurrent callers, and reports a later exit", async () => {
    const dir = tmpDir();
    const marker = join(dir, "started");
    let up = false;
    const bin = script(dir, `echo "$@" >> ${marker}; sleep 0.3; exit 0`);
    let exits = 0;
    const w = new WireguardGo({ device: "wgt0", control: new GatedControl(() => up), logFile: join(dir, "wg.log"), log: silentLog, onExit: () => exits++, bin });
    setTimeout(() => (up = true), 100);
    const [a, b] = await Promise.all([w.ensureRunning(), w.ensureRunning()]);
    expect([a, b]).toEqual(["started", "started"]);
    expect(readFileSync(marker, "utf8").trim().split("\n")).toEqual(["-f wgt0"]);
    expect(await w.ensureRunning()).toBe("running");
    await new Promise((r) => setTimeout(r, 600));
    expect(exits).toBe(1);
  });
});
