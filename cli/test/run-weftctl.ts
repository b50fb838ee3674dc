// Runs the real bin/weftctl (the compiled dist/cli) as a child process, as
// scripts and operators do.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { expect } from "vitest";
import { runToEnd } from "../../lease-server/test/server-process.js";

const ROOT = join(import.meta.dirname, "../..");
const WEFTCTL = join(ROOT, "bin/weftctl");

export interface Run { code: number | null; stdout: string; stderr: string; ms: number }

/** weftctl runs from dist/: a missing build fails the test (CI builds first), never skips it. */
export function assertBuilt(): void {
  if (!existsSync(join(ROOT, "dist/cli/src/main.js"))) throw new Error("dist/cli/src/main.js is missing: run npx tsc -p tsconfig.json (npm run pretest) first");
}

/** Runs bin/weftctl with only PATH and `env` (no WEFT_* of the caller's shell). */
export async function weftctl(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const started = Date.now();
  const r = await runToEnd(process.execPath, [WEFTCTL, ...args], { env: { PATH: process.env.PATH ?? "", ...env }, timeoutMs: 20_000 });
  return { ...r, ms: Date.now() - started };
}

/** stderr is one line without a stack trace; returns it. */
export function oneLine(stderr: string): string {
  expect(stderr.trimEnd().split("\n"), stderr).toHaveLength(1);
  expect(stderr).not.toMatch(/\n\s+at /);
  return stderr.trimEnd();
}
