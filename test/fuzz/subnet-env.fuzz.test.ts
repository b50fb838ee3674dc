// subnet.env, fuzzed: whatever a previous run, another tool or a disk error
// left in the file, the agent reads either a canonical subnet CIDR (only
// ever one the file's FLANNEL_SUBNET names) or nothing; a file it wrote
// itself always reads back as the subnet it wrote.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import fc from "fast-check";
import { formatCidr, formatIpv4, maskOf, parseCidr } from "../../lib/src/cidr.js";
import { formatSubnetEnv, parseEnvFile, readPreviousSubnet, writeSubnetEnv } from "../../node-agent/src/subnet-env.js";
import { FUZZ_TIMEOUT_MS, fuzzParams, inputCounter, mutate, nastyString } from "./fuzz.js";

const dir = mkdtempSync(join(tmpdir(), "weft-fuzz-env-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const netArb = fc.tuple(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 1, max: 30 }))
  .map(([ip, prefix]) => ({ ip: (ip & maskOf(prefix)) >>> 0, prefix }));

const line = fc.oneof(
  fc.constantFrom("FLANNEL_NETWORK=10.244.0.0/16", "FLANNEL_MTU=1450", "FLANNEL_IPMASQ=false", "# comment", "", "export FLANNEL_SUBNET=10.244.3.1/24",
    "FLANNEL_SUBNET=10.244.1.1/24,10.244.2.1/24", 'FLANNEL_SUBNET="10.244.9.1/24"', "FLANNEL_SUBNET='10.244.9.1/24", "FLANNEL_SUBNET = 10.244.4.1/24 ",
    "FLANNEL_SUBNET=", "FLANNEL_SUBNET=10.244.5.1", "FLANNEL_SUBNET=10.244.5.1/33", "FLANNEL_SUBNET=256.0.0.1/24", "FLANNEL_SUBNET=10.244.5.1/24\r", "FLANNEL_SUBNET==10.244.5.1/24"),
  fc.tuple(fc.constantFrom("FLANNEL_SUBNET=", "flannel_subnet=", "FLANNEL_SUBNET\t=\t"), nastyString(["10.244.7.1/24", "0.0.0.0/0", "255.255.255.255/32"])).map(([k, v]) => k + v),
  fc.constant("FLANNEL_SUBNET=10.244.7.1/24").chain(mutate),
  fc.string({ unit: "binary", maxLength: 60 }),
);
const fileText = fc.oneof(fc.array(line, { maxLength: 8 }).chain((ls) => fc.constantFrom("\n", "\r\n").map((eol) => ls.join(eol))), fc.string({ unit: "binary", maxLength: 300 }));

describe("subnet.env (fuzz)", () => {
  const inputs = inputCounter("subnet.env");

  it("arbitrary contents: a canonical CIDR that FLANNEL_SUBNET names, or undefined", async () => {
    const path = join(dir, "subnet.env");
    await fc.assert(fc.asyncProperty(fc.oneof(fileText.map((t) => Buffer.from(t, "utf8")), fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b))), async (bytes) => {
      inputs.add();
      writeFileSync(path, bytes);
      const got = await readPreviousSubnet(path);
      if (got === undefined) return;
      const n = parseCidr(got);
      expect(n, `${got} is a strict CIDR`).toBeDefined();
      expect(formatCidr(n!)).toBe(got);
      // It comes from the file's (last) FLANNEL_SUBNET, host bits cleared, never from elsewhere.
      const named = parseEnvFile(bytes.toString("utf8")).FLANNEL_SUBNET;
      expect(named).toBeDefined();
      expect(formatCidr(parseCidr(named!, false)!)).toBe(got);
    }), fuzzParams(1000));
  }, FUZZ_TIMEOUT_MS);

  it("what the agent writes reads back as the subnet it wrote, among any other lines", async () => {
    await fc.assert(fc.asyncProperty(netArb, netArb, fc.integer({ min: 0, max: 65535 }), fc.boolean(), fc.array(line.filter((l) => !/FLANNEL_SUBNET/i.test(l) && !l.includes("\r") && !l.includes("\n")), { maxLength: 4 }), async (network, subnet, mtu, ipMasq, noise) => {
      inputs.add();
      const path = join(dir, "rt", "subnet.env");
      const e = { network, subnet, mtu, ipMasq };
      await writeSubnetEnv(path, e);
      expect(await readPreviousSubnet(path)).toBe(formatCidr(subnet));
      const env = parseEnvFile(formatSubnetEnv(e));
      expect(env).toEqual({ FLANNEL_NETWORK: formatCidr(network), FLANNEL_SUBNET: `${formatIpv4((subnet.ip + 1) >>> 0)}/${subnet.prefix}`, FLANNEL_MTU: String(mtu), FLANNEL_IPMASQ: String(ipMasq) });
      // Someone appended their own lines: our subnet is still what we read.
      writeFileSync(path, `${noise.join("\n")}\n${formatSubnetEnv(e)}${noise.join("\n")}\n`);
      expect(await readPreviousSubnet(path)).toBe(formatCidr(subnet));
    }), fuzzParams(300));
  }, FUZZ_TIMEOUT_MS);

  it("a directory, an absent file or an empty one reads as no previous subnet", async () => {
    mkdirSync(join(dir, "isdir"), { recursive: true });
    expect(await readPreviousSubnet(join(dir, "isdir"))).toBeUndefined();
    expect(await readPreviousSubnet(join(dir, "absent"))).toBeUndefined();
    writeFileSync(join(dir, "empty"), "");
    expect(await readPreviousSubnet(join(dir, "empty"))).toBeUndefined();
    inputs.add(3);
  }, FUZZ_TIMEOUT_MS);
});
