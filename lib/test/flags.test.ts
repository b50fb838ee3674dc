import { describe, expect, it } from "vitest";
import { WeftError } from "../src/errors.js";
import { envName, formatHelp, parseFlags, parseHostPort, readFlags, usageError } from "../src/flags.js";

const spec = {
  listen: { type: "string", default: "0.0.0.0:1", help: "" },
  name: { type: "string", help: "" },
  insecure: { type: "boolean", help: "" },
} as const;

describe("flags", () => {
  it("reads --name value, --name=value and booleans", () => {
    expect(parseFlags(["--name", "a", "--listen=1.2.3.4:5", "--insecure"], spec, "x")).toEqual({ listen: "1.2.3.4:5", name: "a", insecure: true });
    expect(parseFlags([], spec, "x")).toEqual({ listen: "0.0.0.0:1", name: undefined, insecure: false });
  });
  it.each([
    [["--nope"], /unknown flag --nope; run x --help/],
    [["--constructor", "x"], /unknown flag --constructor/],
    [["--toString"], /unknown flag --toString/],
    [["--name"], /--name needs a value/],
    [["--name", "--insecure"], /--name needs a value/],
    [["stray"], /unexpected argument "stray"/],
    [["--insecure=yes"], /--insecure takes no value/],
    [["--name="], /--name is empty/],
  ])("rejects %j clearly", (argv, re) => {
    expect(() => parseFlags(argv, spec, "x")).toThrow(re);
  });
  it("parses HOST:PORT", () => {
    expect(parseHostPort("127.0.0.1:8080", "listen")).toEqual(["127.0.0.1", 8080]);
    expect(parseHostPort("[::1]:80", "listen")).toEqual(["::1", 80]);
    expect(() => parseHostPort("127.0.0.1", "listen")).toThrow(/--listen: "127.0.0.1" is not HOST:PORT/);
    expect(() => parseHostPort("h:99999", "listen")).toThrow(/not HOST:PORT/);
  });
});

describe("flags from the environment (WEFT_*)", () => {
  const envSpec = {
    "lease-ttl": { type: "string", default: "24h", help: "" },
    "node-name": { type: "string", help: "" },
    "tls-cert": { type: "string", help: "" },
    "http-tls-cert": { type: "string", help: "" },
    insecure: { type: "boolean", help: "" },
    "forward-rules": { type: "boolean", default: "true", help: "" },
    help: { type: "boolean", help: "" },
  } as const;
  const read = (argv: string[], env: Record<string, string>, warn?: (m: string) => void) => readFlags(argv, envSpec, "x", env, warn);

  it("maps each flag to WEFT_<FLAG>", () => {
    expect(envName("node-name")).toBe("WEFT_NODE_NAME");
    expect(envName("insecure")).toBe("WEFT_INSECURE");
    const f = read([], { WEFT_NODE_NAME: "n1", WEFT_LEASE_TTL: "30s", WEFT_INSECURE: "true" });
    expect(f.values).toEqual({ "lease-ttl": "30s", "node-name": "n1", "tls-cert": undefined, "http-tls-cert": undefined, insecure: true, "forward-rules": true, help: false });
    expect([...f.given].sort()).toEqual(["insecure", "lease-ttl", "node-name"]);
    expect(f.nameOf("lease-ttl")).toBe("WEFT_LEASE_TTL");
    expect(f.nameOf("tls-cert")).toBe("--tls-cert");
  });

  it("the command line wins over the environment, also for booleans given as --flag=false", () => {
    const f = read(["--lease-ttl", "1m", "--insecure=false", "--forward-rules"], { WEFT_LEASE_TTL: "30s", WEFT_INSECURE: "yes", WEFT_FORWARD_RULES: "no" });
    expect(f.values).toMatchObject({ "lease-ttl": "1m", insecure: false, "forward-rules": true });
    expect(f.nameOf("lease-ttl")).toBe("--lease-ttl");
    expect(f.nameOf("insecure")).toBe("--insecure");
  });

  it.each([
    ["true", true], ["TRUE", true], ["1", true], ["yes", true], ["Yes", true],
    ["false", false], ["False", false], ["0", false], ["no", false], ["NO", false],
  ])("reads the boolean %j as %s", (v, want) => {
    expect(read([], { WEFT_INSECURE: v }).values.insecure).toBe(want);
    expect(read([], { WEFT_FORWARD_RULES: v }).values["forward-rules"]).toBe(want);
  });

  it.each(["maybe", "on", "2", "tru"])("rejects the boolean %j naming the variable", (v) => {
    expect(() => read([], { WEFT_INSECURE: v })).toThrow(`WEFT_INSECURE: ${JSON.stringify(v)} is not a boolean; use true or false`);
    let err: unknown;
    try { read([], { WEFT_INSECURE: v }); } catch (e) { err = e; }
    expect(err).toMatchObject({ code: "CONFIG_INVALID" });
  });

  it("an empty variable counts as unset", () => {
    expect(read([], { WEFT_LEASE_TTL: "", WEFT_INSECURE: "" }).values).toMatchObject({ "lease-ttl": "24h", insecure: false });
    expect(read([], { WEFT_LEASE_TTL: "" }).given.size).toBe(0);
  });

  it("WEFT_HELP is no flag: it is ignored with a warning", () => {
    const warnings: string[] = [];
    expect(read([], { WEFT_HELP: "true" }, (m) => warnings.push(m)).values.help).toBe(false);
    expect(warnings).toEqual([expect.stringContaining("WEFT_HELP is not a x setting and is ignored")]);
  });

  it("warns once per unknown WEFT_ variable, naming the closest flag, and does not fail", () => {
    const warnings: string[] = [];
    const f = read([], { WEFT_NODENAME: "n1", WEFT_INSCURE: "1", WEFT_SOMETHING_ELSE_ENTIRELY: "x", PATH: "/bin", FLANNELD_IFACE: "eth0" }, (m) => warnings.push(m));
    expect(f.values["node-name"]).toBeUndefined();
    expect(warnings).toHaveLength(3);
    expect(warnings[0]).toMatch(/^warning: WEFT_NODENAME is not a x setting and is ignored \(did you mean WEFT_NODE_NAME\?/);
    expect(warnings[1]).toMatch(/WEFT_INSCURE .*did you mean WEFT_INSECURE\?/);
    expect(warnings[2]).toMatch(/WEFT_SOMETHING_ELSE_ENTIRELY is not a x setting/);
    expect(warnings[2]).not.toMatch(/did you mean/);
  });

  it("leaves the scripts', benchmarks' and tests' own WEFT_ variables alone", () => {
    const warnings: string[] = [];
    read([], { WEFT_DEMO_DURATION: "1m", WEFT_IPERF_SECONDS: "5", WEFT_IPERF_MODES: "a", WEFT_IPERF_ROUNDS: "3", WEFT_FUZZ_SEED: "1", WEFT_BENCH_SIZES: "1", WEFT_DRIFT_ROUNDS: "1", WEFT_DRIFT_TIMER_ROUNDS: "1", WEFT_KEEP_LOGS: "1", WEFT_E2E: "1", WEFT_SERVER_NAMES: "a,b" }, (m) => warnings.push(m));
    expect(warnings).toEqual([]);
  });

  it("explain() names the variable in errors about values from the environment, the flag otherwise", () => {
    const f = read(["--node-name", "n1"], { WEFT_LEASE_TTL: "5x", WEFT_TLS_CERT: "/c" });
    const check = (message: string) => () => f.explain(() => { throw usageError(message); });
    expect(check(`--lease-ttl: "5x" is not a duration`)).toThrow(/^WEFT_LEASE_TTL: "5x" is not a duration$/);
    expect(check("--tls-cert and --http-tls-cert/--node-name")).toThrow(/^WEFT_TLS_CERT and --http-tls-cert\/--node-name$/);
    expect(check("--tls-certificate --lease-ttls -x--lease-ttl")).toThrow(/^--tls-certificate --lease-ttls -x--lease-ttl$/);
    // Other errors pass unchanged.
    const other = new WeftError("STORE_UNAVAILABLE", "--lease-ttl");
    expect(() => f.explain(() => { throw other; })).toThrow(other);
    expect(f.explain(() => 42)).toBe(42);
  });

  it("parseHostPort errors behind explain() name the variable", () => {
    const f = readFlags([], { listen: { type: "string", help: "" } }, "x", { WEFT_LISTEN: "nowhere" });
    expect(() => f.explain(() => parseHostPort(f.values.listen!, "listen"))).toThrow(/^WEFT_LISTEN: "nowhere" is not HOST:PORT/);
  });

  it("--help says how the environment works, with an example from the daemon's own flags", () => {
    const help = formatHelp("x", "does x", envSpec);
    expect(help).toContain("Every flag can also be set as WEFT_<FLAG> (e.g. WEFT_LEASE_TTL for --lease-ttl); the command line wins.");
    expect(help).toContain("Booleans there take true or false (also 1/0, yes/no)");
  });
});
