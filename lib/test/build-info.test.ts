import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { WEFT_VERSION, registerBuildInfo } from "../src/build-info.js";

const ROOT = join(import.meta.dirname, "../..");
const pkgVersion = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;

describe("weft_build_info", () => {
  it("carries package.json's version, from the sources and from dist/ (which sits one level deeper)", async () => {
    expect(WEFT_VERSION).toBe(pkgVersion);
    const dist = (await import(join(ROOT, "dist/lib/src/build-info.js"))) as { WEFT_VERSION: string };
    expect(dist.WEFT_VERSION).toBe(pkgVersion);
  });

  it("is one series: backend unknown until set, then replaced", async () => {
    const registry = new Registry();
    const info = registerBuildInfo(registry, "1.2.3");
    const series = async () => (await registry.metrics()).split("\n").filter((l) => l.startsWith("weft_build_info{"));
    expect(await series()).toEqual(['weft_build_info{version="1.2.3",backend="unknown"} 1']);
    info.setBackend("vxlan");
    info.setBackend("wireguard");
    expect(await series()).toEqual(['weft_build_info{version="1.2.3",backend="wireguard"} 1']);
  });
});
