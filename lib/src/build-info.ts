// weft_build_info{version, backend} = 1 on both daemons, so a dashboard can
// tell which release and which backend each scraped process runs.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { Gauge, type Registry } from "prom-client";

/**
 * The version in weft's package.json, read once. Found by walking up from this file, since the
 * sources (lib/src) and the build (dist/lib/src) sit at different depths; a JSON import would make
 * tsc copy package.json into dist/. "unknown" when an install left the file out.
 */
export const WEFT_VERSION: string = (() => {
  let dir = import.meta.dirname;
  for (let i = 0; i < 5; i++) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { name?: unknown; version?: unknown };
      if (pkg.name === "weft" && typeof pkg.version === "string") return pkg.version;
    } catch { /* not here: one level up */ }
    dir = dirname(dir);
  }
  return "unknown";
})();

/** Until the network config is read, the backend label says "unknown". */
export const UNKNOWN_BACKEND = "unknown";

export interface BuildInfo {
  /** Replaces the one series, so a backend change leaves no stale one behind. */
  setBackend(backend: string): void;
}

export function registerBuildInfo(registry: Registry, version = WEFT_VERSION): BuildInfo {
  const gauge = new Gauge({ name: "weft_build_info", help: "Always 1; the labels say which weft version runs and the network's backend type", labelNames: ["version", "backend"] as const, registers: [registry] });
  const setBackend = (backend: string) => {
    gauge.reset();
    gauge.set({ version, backend }, 1);
  };
  setBackend(UNKNOWN_BACKEND);
  return { setBackend };
}
