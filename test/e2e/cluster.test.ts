import { describe, expect, it } from "vitest";
import { join } from "node:path";
import { ROOT, shebangNodeFlags } from "./cluster.js";

describe("Cluster dist runner", () => {
  it("runs bin/weft-agent with the V8 flags of its shebang", () => {
    expect(shebangNodeFlags(join(ROOT, "bin", "weft-agent"))).toEqual(["--max-semi-space-size=2", "--max-old-space-size=192", "--optimize-for-size", "--no-opt"]);
    expect(shebangNodeFlags(join(ROOT, "bin", "weft-lease-server"))).toEqual([]);
  });
});
