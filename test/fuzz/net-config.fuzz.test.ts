// net-conf.json, fuzzed: arbitrary text, arbitrary JSON, and valid configs
// with one field mutated. Each input either parses into a config that keeps
// the invariants (and round-trips through networkConfigJson), or fails with
// CONFIG_INVALID naming a field; never another exception.
import { describe, expect, it } from "vitest";
import fc from "fast-check";
import { formatCidr, formatIpv4, lastAddress, maskOf, sizeOf } from "../../lib/src/cidr.js";
import { WeftError } from "../../lib/src/errors.js";
import { networkConfigJson, parseNetworkConfig, type NetworkConfig } from "../../lib/src/net-config.js";
import { FUZZ_TIMEOUT_MS, fuzzParams, inputCounter, nastyString } from "./fuzz.js";

const FIELDS = ["Network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend", "EnableIPv4", "EnableIPv6", "EnableNFTables", "IPv6Network",
  "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax", "Type", "VNI", "Port", "MTU", "GBP", "Learning", "DirectRouting", "ListenPort",
  "PersistentKeepaliveInterval", "Networks", "IPv6Networks", "MacPrefix", "PSK", "Mode", "ListenPortV6"];

function checkInvariants(cfg: NetworkConfig): void {
  const n = cfg.network;
  expect(n.prefix).toBeGreaterThanOrEqual(0);
  expect(n.prefix).toBeLessThanOrEqual(32);
  expect((n.ip & maskOf(n.prefix)) >>> 0).toBe(n.ip);
  expect(cfg.subnetLen).toBeGreaterThanOrEqual(n.prefix + 2);
  expect(cfg.subnetLen).toBeLessThanOrEqual(30);
  for (const b of [cfg.subnetMin, cfg.subnetMax]) {
    expect(((b & maskOf(n.prefix)) >>> 0), `${formatIpv4(b)} inside ${formatCidr(n)}`).toBe(n.ip);
    expect(((b & maskOf(cfg.subnetLen)) >>> 0)).toBe(b);
    expect(b + sizeOf(cfg.subnetLen) - 1).toBeLessThanOrEqual(lastAddress(n));
  }
  expect(cfg.subnetMin).toBeLessThanOrEqual(cfg.subnetMax);
  const b = cfg.backend;
  expect(b.mtu === 0 || (b.mtu >= 576 && b.mtu <= 65535)).toBe(true);
  if (b.type === "vxlan") {
    expect(b.vni).toBeGreaterThanOrEqual(1);
    expect(b.vni).toBeLessThanOrEqual(16777215);
    expect(b.port).toBeGreaterThanOrEqual(1);
    expect(b.port).toBeLessThanOrEqual(65535);
  }
  if (b.type === "wireguard") {
    expect(b.listenPort).toBeGreaterThanOrEqual(1);
    expect(b.listenPort).toBeLessThanOrEqual(65535);
    expect(b.persistentKeepaliveInterval).toBeGreaterThanOrEqual(0);
  }
  expect(Object.isFrozen(cfg) && Object.isFrozen(cfg.backend) && Object.isFrozen(cfg.network)).toBe(true);
  // The canonical form parses back to the same config (what the etcd store compares between servers).
  const json = networkConfigJson(cfg);
  expect(parseNetworkConfig(json)).toEqual(cfg);
  expect(networkConfigJson(parseNetworkConfig(json))).toBe(json);
}

/** Parses; on failure the error must be CONFIG_INVALID naming a field. */
function parseOrExplain(text: string): NetworkConfig | undefined {
  try {
    return parseNetworkConfig(text);
  } catch (err) {
    expect(err, `non-WeftError thrown for ${text.slice(0, 200)}`).toBeInstanceOf(WeftError);
    const e = err as WeftError;
    expect(e.code).toBe("CONFIG_INVALID");
    expect(e.message).toMatch(/^network config: (\(file\)|(Backend\.)?([A-Za-z0-9_-]+|"([^"\\]|\\.)*")): \S.*; \S/s);
    return undefined;
  }
}

const scalar = fc.oneof(
  fc.constant(null), fc.boolean(), fc.integer({ min: -70000, max: 70000 }), fc.double(), fc.constantFrom(2 ** 53, -0, 1e308, 0.5, 24, 32, 33, 576, 8472),
  nastyString(["10.244.0.0/16", "10.244.0.0", "10.244.255.0", "0.0.0.0", "vxlan", "host-gw", "wireguard", "0.0.0.0/0", "255.255.255.255/32"]),
);
const jsonValue = fc.letrec((tie) => ({
  value: fc.oneof({ depthSize: "small" }, scalar, fc.array(tie("value"), { maxLength: 3 }), fc.dictionary(fc.oneof(fc.constantFrom(...FIELDS), fc.string({ maxLength: 8 })), tie("value"), { maxKeys: 4 })),
})).value;

const validConfig = fc.record({
  prefix: fc.integer({ min: 0, max: 28 }),
  ip: fc.integer({ min: 0, max: 0xffffffff }),
  extra: fc.integer({ min: 2, max: 8 }),
  type: fc.constantFrom("vxlan", "host-gw", "wireguard"),
}).map(({ prefix, ip, extra, type }) => {
  const net = (ip & maskOf(prefix)) >>> 0;
  const subnetLen = Math.min(30, prefix + extra);
  return { Network: formatCidr({ ip: net, prefix }), SubnetLen: subnetLen, Backend: { Type: type } } as Record<string, unknown>;
});

/** A valid config with one key set to an arbitrary value, removed, or respelled. */
const mutated = fc.tuple(validConfig, fc.constantFrom(...FIELDS), fc.oneof(scalar, jsonValue), fc.constantFrom("set", "delete", "case", "backend")).map(([c, k, v, how]) => {
  const o: Record<string, unknown> = JSON.parse(JSON.stringify(c));
  if (how === "set") o[k] = v;
  else if (how === "delete") delete o[k];
  else if (how === "case") o[k.toLowerCase()] = v;
  else (o.Backend as Record<string, unknown>)[k] = v;
  return JSON.stringify(o);
});

describe("net-conf.json (fuzz)", () => {
  const inputs = inputCounter("net-conf.json");
  const property = (arb: fc.Arbitrary<string>) => fc.property(arb, (text) => {
    inputs.add();
    const cfg = parseOrExplain(text);
    if (cfg) checkInvariants(cfg);
  });

  it("arbitrary text: a valid config or CONFIG_INVALID naming the field", () => {
    fc.assert(property(fc.oneof(fc.string({ unit: "binary", maxLength: 200 }), fc.json({ maxDepth: 3 }))), fuzzParams(1000));
  }, FUZZ_TIMEOUT_MS);

  it("arbitrary JSON objects with weft's and Flannel's keys", () => {
    fc.assert(property(fc.dictionary(fc.constantFrom(...FIELDS), jsonValue, { maxKeys: 6 }).map((o) => JSON.stringify(o))), fuzzParams(1000));
  }, FUZZ_TIMEOUT_MS);

  it("valid configs parse with their invariants; one mutated field is a valid config or names the field", () => {
    let parsed = 0;
    fc.assert(fc.property(validConfig, (c) => {
      inputs.add();
      const cfg = parseNetworkConfig(JSON.stringify(c));
      checkInvariants(cfg);
      parsed++;
    }), fuzzParams(500));
    expect(parsed).toBeGreaterThan(0);
    fc.assert(property(mutated), fuzzParams(1500));
  }, FUZZ_TIMEOUT_MS);
});
