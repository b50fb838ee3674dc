// Command-line flags, fuzzed: arbitrary argv of known and unknown flags with
// arbitrary values (files among them: temp files with arbitrary content,
// directories, absent paths) for the flag parser and both daemons' config
// loaders. Each argv gives a deep-frozen config, undefined for --help, or a
// usage error (CONFIG_INVALID) that names a flag; never a TypeError or a stack.
// The flag lists are read from the modules, so flags added later are fuzzed too.
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import fc from "fast-check";
import { WeftError } from "../../lib/src/errors.js";
import { parseFlags, type FlagSpec } from "../../lib/src/flags.js";
import { FLAGS as SERVER_FLAGS, loadServerConfig } from "../../lease-server/src/config.js";
import { FLAGS as AGENT_FLAGS, loadAgentConfig } from "../../node-agent/src/config.js";
import { FUZZ_TIMEOUT_MS, fuzzParams, inputCounter, nastyString } from "./fuzz.js";

const dir = mkdtempSync(join(tmpdir(), "weft-fuzz-flags-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const NETCONF = join(dir, "net-conf.json");
writeFileSync(NETCONF, '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}');
mkdirSync(join(dir, "a-dir"));

let fileSeq = 0;
/** A fresh temp file with the given content (mode 0600, as secrets need), made when the value is drawn. */
function tempFile(content: Uint8Array | string): string {
  const p = join(dir, `f${fileSeq++}`);
  writeFileSync(p, content);
  chmodSync(p, 0o600);
  return p;
}

const PEM_CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const fileValue = fc.oneof(
  fc.oneof(fc.uint8Array({ maxLength: 120 }), fc.string({ unit: "binary", maxLength: 80 }), fc.constantFrom("", PEM_CERT, "x".repeat(44), "A".repeat(43) + "=", "{}", '{"Network": "10.244.0.0/16"}'))
    .map(tempFile),
  fc.constantFrom(NETCONF, join(dir, "a-dir"), join(dir, "absent"), "/dev/null", "/proc/self/status", dir + "/"),
);

/** Values shaped for a flag's placeholder, plus anything at all. */
function valueFor(s: FlagSpec): fc.Arbitrary<string> {
  const v = s.value ?? "";
  const shaped: fc.Arbitrary<string>[] = [];
  if (/FILE/.test(v)) shaped.push(fileValue);
  if (/DIR|PATH/.test(v)) shaped.push(fc.constantFrom(dir, join(dir, "a-dir"), join(dir, "new-dir"), "/proc/self", "relative/path"));
  if (/HOST:PORT/.test(v)) shaped.push(fc.tuple(fc.constantFrom("127.0.0.1", "0.0.0.0", "[::1]", "::1", "localhost", "", "a b"), fc.oneof(fc.integer({ min: -1, max: 70000 }), fc.constant(99999999))).map(([h, p]) => `${h}:${p}`));
  if (/DURATION/.test(v)) shaped.push(fc.oneof(fc.tuple(fc.oneof(fc.nat(100000), fc.double({ min: 0, max: 1e6, noNaN: true })), fc.constantFrom("ms", "s", "m", "h", "d", "", "y", "µs")).map(([n, u]) => `${n}${u}`), fc.constantFrom("1h30m", "0s", "1e3s", "-5s", "9".repeat(30) + "d")));
  if (/^N$/.test(v)) shaped.push(fc.oneof(fc.integer({ min: -5, max: 2_000_000 }).map(String), fc.constantFrom("1e3", "0x10", "2.5", String(2 ** 53 + 1))));
  if (/sqlite|etcd/.test(v)) shaped.push(fc.oneof(fc.constantFrom("sqlite:" + join(dir, "s.db"), "sqlite:", "etcd:", "etcd:http://127.0.0.1:2379", "etcd:https://10.0.0.1:2379,http://[::1]:2379", "etcd:ftp://x:1", "etcd:http://127.0.0.1:2379/path", "mysql:x"), nastyString().map((s) => `etcd:${s}`)));
  if (/LEVEL/.test(v)) shaped.push(fc.constantFrom("trace", "debug", "info", "warn", "error", "fatal", "silent", "INFO", "verbose"));
  if (/NAME|IP|KEY/.test(v)) shaped.push(fc.constantFrom("node-1", "eth0", "198.18.0.1", "0.0.0.0", "127.0.0.1", "Node_1", "a".repeat(254), "weft.1", "x".repeat(16), "/weft/network", "/", "/a/", "/coreos.com/network"));
  return fc.oneof(...shaped, nastyString());
}

/** One argv token or two: --flag, --flag=value, --flag value, an unknown flag, or a stray word. */
function tokens(spec: Record<string, FlagSpec>): fc.Arbitrary<string[]> {
  const names = Object.keys(spec);
  const known = fc.constantFrom(...names).chain((name): fc.Arbitrary<string[]> => {
    const s = spec[name]!;
    if (s.type === "boolean") return fc.oneof(fc.constant<string[]>([`--${name}`]), fc.constantFrom("true", "false", "", "yes", "1").map((b) => [`--${name}=${b}`]));
    const value = valueFor(s);
    return fc.oneof(value.map((v) => [`--${name}`, v]), value.map((v) => [`--${name}=${v}`]), fc.constant<string[]>([`--${name}`]));
  });
  const unknown: fc.Arbitrary<string[]> = fc.oneof(nastyString(["__proto__", "constructor", "toString", "hasOwnProperty", "help=", "-", "HELP"]).map((n) => [`--${n}`]), nastyString().map((w) => [w]), fc.constantFrom("-h", "--", "---insecure", "-insecure").map((t) => [t]));
  return fc.oneof({ weight: 8, arbitrary: known }, { weight: 1, arbitrary: unknown });
}

const argvOf = (spec: Record<string, FlagSpec>, max: number) => fc.array(tokens(spec), { maxLength: max }).map((ts) => ts.flat());

function isDeepFrozen(o: unknown): boolean {
  if (!o || typeof o !== "object" || ArrayBuffer.isView(o)) return true;
  return Object.isFrozen(o) && Object.values(o).every(isDeepFrozen);
}

/** Runs a loader; a failure must be a usage error that names a flag. */
function loadOrExplain<T>(load: (argv: string[]) => T, argv: string[], frozen = true): T | "usage-error" {
  let cfg: T;
  try {
    cfg = load(argv);
  } catch (err) {
    expect(err, `${(err as Error)?.stack}\nargv: ${JSON.stringify(argv)}`).toBeInstanceOf(WeftError);
    const e = err as WeftError;
    expect(e.code).toBe("CONFIG_INVALID");
    expect(e.message, `names a flag: ${e.message}`).toMatch(/--[a-z]|unexpected argument/);
    return "usage-error";
  }
  if (cfg === undefined) expect(argv.some((a) => a === "--help" || a === "--help=true"), "undefined config only for --help").toBe(true);
  else if (frozen) expect(isDeepFrozen(cfg), "config is deep-frozen").toBe(true);
  return cfg;
}

const SPEC = {
  name: { type: "string", value: "NAME", help: "" },
  "with-default": { type: "string", value: "X", default: "d", help: "" },
  on: { type: "boolean", default: "true", help: "" },
  off: { type: "boolean", help: "" },
} as const satisfies Record<string, FlagSpec>;

describe("flags (fuzz)", () => {
  const inputs = inputCounter("flags");

  it("parseFlags: well-formed argv parses to exactly what it says (the last occurrence wins)", () => {
    const entry = fc.oneof(
      fc.tuple(fc.constantFrom("name", "with-default"), fc.string({ minLength: 1, maxLength: 20 }).filter((v) => !v.startsWith("--")), fc.boolean()),
      fc.tuple(fc.constantFrom("on", "off"), fc.boolean(), fc.boolean()),
    );
    fc.assert(fc.property(fc.array(entry, { maxLength: 8 }), (entries) => {
      inputs.add();
      const argv: string[] = [];
      const want: Record<string, unknown> = { name: undefined, "with-default": "d", on: true, off: false };
      for (const [k, v, eq] of entries) {
        if (typeof v === "boolean") argv.push(eq ? `--${k}=${v}` : v ? `--${k}` : `--${k}=false`);
        else argv.push(...(eq ? [`--${k}=${v}`] : [`--${k}`, v]));
        want[k] = v;
      }
      expect(parseFlags(argv, SPEC, "t")).toEqual(want);
    }), fuzzParams(500));
  }, FUZZ_TIMEOUT_MS);

  it("parseFlags: any argv gives only the spec's keys with their types, or a usage error naming the flag", () => {
    fc.assert(fc.property(argvOf(SPEC, 6), (argv) => {
      inputs.add();
      const r = loadOrExplain((a) => parseFlags(a, SPEC, "t"), argv, false);
      if (r === "usage-error") return;
      expect(Object.keys(r).sort()).toEqual(Object.keys(SPEC).sort());
      expect(typeof r.on).toBe("boolean");
      expect(typeof r.off).toBe("boolean");
      expect(typeof r["with-default"]).toBe("string");
      expect(r.name === undefined || (typeof r.name === "string" && r.name !== "")).toBe(true);
      expect(Object.getPrototypeOf(r)).toBe(Object.prototype);
    }), fuzzParams(1000));
  }, FUZZ_TIMEOUT_MS);

  it("weft-lease-server: any argv is a frozen config or a usage error naming the flag", () => {
    let loaded = 0;
    const base = ["--insecure", "--store", `sqlite:${join(dir, "s.db")}`, "--network-config", NETCONF];
    fc.assert(fc.property(fc.oneof(argvOf(SERVER_FLAGS, 8), argvOf(SERVER_FLAGS, 3).map((extra) => [...base, ...extra])), (argv) => {
      inputs.add();
      if (loadOrExplain(loadServerConfig, argv) !== "usage-error") loaded++;
    }), fuzzParams(1000));
    // A good share of inputs get through parsing into the checks behind it.
    expect(loaded).toBeGreaterThan(20);
    // The base itself loads: the fuzz reaches past parsing.
    expect(loadServerConfig(base)).toBeDefined();
  }, FUZZ_TIMEOUT_MS);

  it("weft-agent: any argv is a frozen config or a usage error naming the flag", () => {
    let loaded = 0;
    const base = ["--insecure", "--server", "127.0.0.1:7600", "--node-name", "node-1", "--state-dir", join(dir, "agent-state")];
    fc.assert(fc.property(fc.oneof(argvOf(AGENT_FLAGS, 8), argvOf(AGENT_FLAGS, 3).map((extra) => [...base, ...extra])), (argv) => {
      inputs.add();
      if (loadOrExplain(loadAgentConfig, argv) !== "usage-error") loaded++;
    }), fuzzParams(1000));
    // A good share of inputs get through parsing into the checks behind it.
    expect(loaded).toBeGreaterThan(20);
    expect(loadAgentConfig(base)).toBeDefined();
  }, FUZZ_TIMEOUT_MS);
});
