import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { loadAgentConfig, type AgentConfig } from "../src/config.js";

describe("agent flags", () => {
  it("parses the documented flags with defaults", () => {
    const c = loadAgentConfig(["--server", "10.0.0.1:7600,10.0.0.2:7600", "--node-name", "n1", "--insecure"])!;
    expect(c).toMatchObject({ servers: ["10.0.0.1:7600", "10.0.0.2:7600"], nodeName: "n1", subnetFile: "/run/flannel/subnet.env", stateDir: "/var/lib/weft", httpListen: { host: "127.0.0.1", port: 9464 }, tls: undefined });
    expect(c).toMatchObject({ cleanup: false, ipMasq: false, forwardRules: true });
    expect(loadAgentConfig(["--server", "a:1", "--insecure", "--ip-masq", "--forward-rules=false"])).toMatchObject({ ipMasq: true, forwardRules: false });
    expect(loadAgentConfig(["--help"])).toBeUndefined();
  });

  it("--cleanup needs no server or TLS flags", () => {
    expect(loadAgentConfig(["--cleanup"])).toEqual({ cleanup: true, logLevel: "info" });
    expect(() => loadAgentConfig(["--cleanup", "--log-level", "loud"])).toThrow(/--log-level/);
  });

  it.each([
    [["--insecure"], /--server is required/],
    [["--server", "x:1", "--insecure", "--bogus"], /unknown flag --bogus/],
    [["--server", "nope", "--insecure"], /--server.*HOST:PORT/],
    [["--server", "a:1"], /needs TLS/],
    [["--server", "a:1", "--insecure", "--tls-ca", "/x"], /conflicts/],
    [["--server", "a:1", "--insecure", "--node-name", "Bad_Name"], /node-name/],
    [["--server", "a:1", "--insecure", "--public-ip", "300.1.1.1"], /--public-ip/],
    [["--server", "a:1", "--insecure", "--resync-interval", "soon"], /--resync-interval/],
    [["--server", "a:1", "--insecure", "--resync-interval", "25d"], /--resync-interval.*1s to 1h/],
    [["--server", "a:1", "--insecure", "--resync-interval", "200ms"], /--resync-interval.*1s to 1h/],
    [["--server", "a:1", "--insecure", "--forward-rules=maybe"], /--forward-rules takes no value \(or =true\/=false\)/],
    [["--server", "a:1", "--tls-ca", "/nonexistent/ca.crt"], /--tls-ca: cannot read \/nonexistent\/ca.crt \(ENOENT\)/],
  ])("rejects %j with a clear CONFIG_INVALID message", (argv, re) => {
    let err: unknown;
    try { loadAgentConfig(argv as string[]); } catch (e) { err = e; }
    expect(err).toMatchObject({ code: "CONFIG_INVALID" });
    expect((err as Error).message).toMatch(re);
  });
});

describe("agent flags: WireGuard", () => {
  const dir = mkdtempSync(join(tmpdir(), "weft-config-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const base = ["--server", "a:1", "--insecure"];
  const load = (...argv: string[]) => loadAgentConfig([...base, ...argv]) as AgentConfig;
  const errorOf = (...argv: string[]): Error & { code?: string } => {
    try {
      loadAgentConfig([...base, ...argv]);
    } catch (e) {
      return e as Error;
    }
    throw new Error(`${JSON.stringify(argv)} was accepted`);
  };
  // As wg genpsk prints it.
  const PSK = "Hn7dLMY0+nBFnsm9/ka0v4jLk5j2oGUUq5s4zRCHbhk=";

  it("defaults: device weft-wg, no pre-shared key, no rotation timer", () => {
    const c = load();
    expect(c.wireguardDevice).toBe("weft-wg");
    expect(c.wireguardPsk).toBeUndefined();
    expect(c.wireguardKeyRotationMs).toBe(0);
  });

  it("--wireguard-psk-file reads the key (trailing newline and all)", () => {
    const path = join(dir, "psk");
    writeFileSync(path, `${PSK}\n`, { mode: 0o600 });
    expect(load("--wireguard-psk-file", path).wireguardPsk).toBe(PSK);
    expect(load(`--wireguard-psk-file=${path}`).wireguardPsk).toBe(PSK);
  });

  it("--wireguard-psk-file: a missing file is a usage error naming the flag and the path", () => {
    const path = join(dir, "nope.psk");
    const err = errorOf("--wireguard-psk-file", path);
    expect(err.code).toBe("CONFIG_INVALID");
    expect(err.message).toMatch(/^--wireguard-psk-file: /);
    expect(err.message).toContain(`${path} does not exist; make the key once with wg genpsk > ${path} and copy the same file to every node`);
  });

  it.each([
    ["garbage", "not a key\n"],
    ["a 31-byte key", `${Buffer.alloc(31, 7).toString("base64")}\n`],
    ["two keys", `${PSK}\n${PSK}\n`],
    ["an empty file", ""],
  ])("--wireguard-psk-file: %s is a usage error naming the flag and wg genpsk", (_what, content) => {
    const path = join(dir, "bad.psk");
    writeFileSync(path, content);
    const err = errorOf("--wireguard-psk-file", path);
    expect(err.code).toBe("CONFIG_INVALID");
    expect(err.message).toMatch(/^--wireguard-psk-file: /);
    expect(err.message).toContain(path);
    expect(err.message).toMatch(/does not hold a WireGuard key/);
    expect(err.message).toContain(`wg genpsk > ${path}`);
  });

  it("--wireguard-device takes an interface name", () => {
    expect(load("--wireguard-device", "wg0").wireguardDevice).toBe("wg0");
    expect(load("--wireguard-device", "abcdefghijklmno").wireguardDevice).toBe("abcdefghijklmno"); // 15, the kernel's limit
    for (const bad of ["abcdefghijklmnop", "wg/0", "wg 0", "wg0\n"]) {
      const err = errorOf("--wireguard-device", bad);
      expect(err.code, bad).toBe("CONFIG_INVALID");
      expect(err.message, bad).toMatch(/^--wireguard-device: .* is not a valid interface name/);
    }
    expect(errorOf("--wireguard-device", "").message).toMatch(/^--wireguard-device is empty/);
  });

  it("--wireguard-key-rotation takes a duration from 1m to 24d (Node's timers end at 24.8 days)", () => {
    expect(load("--wireguard-key-rotation", "24h").wireguardKeyRotationMs).toBe(86_400_000);
    expect(load("--wireguard-key-rotation", "1m").wireguardKeyRotationMs).toBe(60_000);
    expect(load("--wireguard-key-rotation", "24d").wireguardKeyRotationMs).toBe(24 * 86_400_000);
    for (const bad of ["30s", "59s", "bogus", "0s", "-1h", "24", "25d"]) {
      const err = errorOf("--wireguard-key-rotation", bad);
      expect(err.code, bad).toBe("CONFIG_INVALID");
      expect(err.message, bad).toMatch(/^--wireguard-key-rotation: .* is not a duration from 1m to 24d; write it like 24h/);
    }
  });
});

describe("agent flags: --admin-token-file", () => {
  const dir = mkdtempSync(join(tmpdir(), "weft-agent-admin-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const TOKEN = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
  const file = (name: string, text: string, mode = 0o600) => {
    const p = join(dir, name);
    writeFileSync(p, text, { mode });
    return p;
  };
  const base = ["--server", "a:1", "--insecure"];

  it("a non-loopback --http-listen needs a token; loopback works without", () => {
    expect(() => loadAgentConfig([...base, "--http-listen", "0.0.0.0:9464"])).toThrow(/--http-listen 0\.0\.0\.0: POST \/v1\/wireguard\/rotate-key would be open.*--admin-token-file FILE/);
    expect(loadAgentConfig([...base, "--http-listen", "127.0.0.1:9464"])).toMatchObject({ adminToken: undefined });
    expect(loadAgentConfig([...base, "--http-listen", "0.0.0.0:9464", "--admin-token-file", file("ok", `${TOKEN}\n`)])).toMatchObject({ adminToken: TOKEN });
  });

  it("refuses a token file others can read, or a short token", () => {
    expect(() => loadAgentConfig([...base, "--admin-token-file", file("shared", TOKEN, 0o644)])).toThrow(/readable by others.*chmod 600/);
    expect(() => loadAgentConfig([...base, "--admin-token-file", file("short", "abc")])).toThrow(/3 characters, fewer than 32/);
    expect(() => loadAgentConfig([...base, "--admin-token-file", join(dir, "absent")])).toThrow(/cannot read.*ENOENT/);
  });
});

describe("agent flags: --metrics-listen", () => {
  const base = ["--server", "a:1", "--insecure"];
  const load = (...argv: string[]) => loadAgentConfig([...base, ...argv]) as AgentConfig;

  it("is off by default and may use any address: it serves nothing that changes state", () => {
    expect(load().metricsListen).toBeUndefined();
    expect(load("--metrics-listen", "0.0.0.0:9465").metricsListen).toEqual({ host: "0.0.0.0", port: 9465, name: "--metrics-listen" });
    expect(load("--metrics-listen", "[::]:9465").metricsListen).toEqual({ host: "::", port: 9465, name: "--metrics-listen" });
  });

  it.each([
    [["--metrics-listen", "9465"], /--metrics-listen: "9465" is not HOST:PORT/],
    [["--metrics-listen", "127.0.0.1:9464"], /--metrics-listen 127\.0\.0\.1:9464 and --http-listen 127\.0\.0\.1:9464 use the same port; give --metrics-listen another one, e\.g\. 127\.0\.0\.1:9465/],
    [["--metrics-listen", "0.0.0.0:9464"], /use the same port/],
  ])("rejects %j", (argv, re) => {
    expect(() => load(...argv)).toThrow(re);
  });

  it("the same port on another specific address is fine", () => {
    expect(load("--metrics-listen", "198.18.0.1:9464").metricsListen).toMatchObject({ port: 9464 });
  });
});
