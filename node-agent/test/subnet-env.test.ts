import { mkdtempSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseCidr } from "../../lib/src/cidr.js";
import { formatSubnetEnv, readPreviousSubnet, writeSubnetEnv } from "../src/subnet-env.js";

const env = { network: parseCidr("10.244.0.0/16")!, subnet: parseCidr("10.244.7.0/24")!, mtu: 1450, ipMasq: false };

describe("subnet.env", () => {
  it("has Flannel's exact format", () => {
    expect(formatSubnetEnv(env)).toBe("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n");
  });

  it("is written atomically with 0755 dir and 0644 file, and read back as the previous subnet", async () => {
    const old = process.umask(0o077);
    try {
      const path = join(mkdtempSync(join(tmpdir(), "weft-env-")), "run", "flannel", "subnet.env");
      await writeSubnetEnv(path, env);
      expect(readFileSync(path, "utf8")).toBe(formatSubnetEnv(env));
      expect(statSync(path).mode & 0o777).toBe(0o644);
      expect(await readPreviousSubnet(path)).toBe("10.244.7.0/24");
    } finally {
      process.umask(old);
    }
  });

  it("treats missing, list-valued or invalid FLANNEL_SUBNET as none", async () => {
    const dir = mkdtempSync(join(tmpdir(), "weft-env-"));
    expect(await readPreviousSubnet(join(dir, "absent"))).toBeUndefined();
    writeFileSync(join(dir, "a"), "FLANNEL_SUBNET=10.244.1.1/24,10.244.2.1/24\n");
    expect(await readPreviousSubnet(join(dir, "a"))).toBeUndefined();
    writeFileSync(join(dir, "b"), "FLANNEL_SUBNET=banana\n");
    expect(await readPreviousSubnet(join(dir, "b"))).toBeUndefined();
    writeFileSync(join(dir, "c"), '# c\nFLANNEL_SUBNET="10.244.9.1/24"\n');
    expect(await readPreviousSubnet(join(dir, "c"))).toBe("10.244.9.0/24");
  });
});
