// Host tools a test needs. Locally a missing tool skips the test with a
// visible reason; in CI (CI=true) it fails the run, because a skipped test
// there would hide a broken setup.
import { existsSync } from "node:fs";

export function findBin(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin").split(":")) {
    if (existsSync(`${dir}/${name}`)) return `${dir}/${name}`;
  }
  return undefined;
}

/** `missing`: what is absent, with how to install it. True when nothing is missing. */
export function requireOrSkip(missing: readonly string[], what: string): boolean {
  if (missing.length === 0) return true;
  const reason = `${what} needs: ${missing.join(", ")}`;
  if (process.env.CI === "true") throw new Error(`${reason} (CI=true: failing instead of skipping)`);
  console.warn(`SKIPPING: ${reason}`);
  return false;
}

/** Tools by name, each with its Debian package: true when all are on PATH. */
export function requireTools(tools: Record<string, string>, what = "this test"): boolean {
  return requireOrSkip(Object.entries(tools).filter(([bin]) => !findBin(bin)).map(([bin, pkg]) => `${bin} (apt-get install ${pkg})`), what);
}
