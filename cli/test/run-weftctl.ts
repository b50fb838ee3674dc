// Runs the real bin/weftctl (the compiled dist/cli) as a child process, as
// scripts and operators do.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { expect } from "vitest";

const ROOT = join(import.meta.dirname, "../..");
const WEFTCTL = join(ROOT, "bin/weftctl");

export interface Run { code: number | null; stdout: string; stderr: string; ms: number }

/** weftctl runs from dist/: a missing build fails the test (CI builds first), never skips it. */
export function assertBuilt(): void {
  if (!existsSync(join(ROOT, "dist/cli/src/main.js"))) throw new Error("dist/cli/src/main.js is missing: run npx tsc -p tsconfig.json (npm run pretest) first");
}

/** Runs bin/weftctl with only PATH and `env` (no WEFT_* of the caller's shell). */
export function weftctl(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const started = Date.now();
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [WEFTCTL, ...args], { env: { PATH: process.env.PATH ?? "", ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d) => (stdout += d));
    p.stderr.on("data", (d) => (stderr += d));
    const t = setTimeout(() => p.kill("SIGKILL"), 20_000);
    p.on("exit", (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr, ms: Date.now() - started });
    });
  });
}

/** stderr is one line without a stack trace; returns it. */
export function oneLine(stderr: string): string {
  expect(stderr.trimEnd().split("\n"), stderr).toHaveLength(1);
  expect(stderr).not.toMatch(/\n\s+at /);
  return stderr.trimEnd();
}
