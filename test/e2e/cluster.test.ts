import { describe, expect, it } from "vitest";
import { join } from "node:path";
import { ROOT, shebangCommand, shebangEnv, shebangNodeFlags } from "./cluster.js";

describe("Cluster dist runner", () => {
  it("runs bin/weft-agent with the V8 flags of its shebang", () => {
    expect(shebangNodeFlags(join(ROOT, "bin", "weft-agent"))).toEqual(["--max-semi-space-size=2", "--max-old-space-size=192", "--optimize-for-size", "--no-opt", "--expose-gc"]);
    expect(shebangNodeFlags(join(ROOT, "bin", "weft-lease-server"))).toEqual([]);
  });

  it("and with the environment its shebang sets", () => {
    const agent = join(ROOT, "bin", "weft-agent");
    expect(shebangEnv(agent)).toEqual(["MALLOC_ARENA_MAX=2"]);
    expect(shebangCommand(agent)).toEqual(["/usr/bin/env", "MALLOC_ARENA_MAX=2", process.execPath, ...shebangNodeFlags(agent)]);
    expect(shebangCommand(join(ROOT, "bin", "weft-lease-server"))).toEqual([process.execPath]);
  });
});
