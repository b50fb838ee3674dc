// Bad TLS files are a usage error naming the flag (exit 2, no stack trace), found before anything starts.
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { loadAgentConfig } from "../src/config.js";
import { requireTools } from "../../test/tools.js";

const ROOT = resolve(import.meta.dirname, "../..");
const dir = mkdtempSync(join(tmpdir(), "weft-tls-"));
const f = (name: string) => join(dir, name);
const hasOpenssl = requireTools({ openssl: "openssl" }, "the TLS flag tests");

function openssl(...args: string[]) {
  const r = spawnSync("openssl", args, { encoding: "utf8" });
  if (r.status !== 0) throw new Error(r.stderr);
}

function configError(argv: string[]): Error | undefined {
  try { loadAgentConfig(["--server", "198.18.0.254:7600", "--node-name", "n1", ...argv]); } catch (e) { return e as Error; }
  return undefined;
}

describe.skipIf(!hasOpenssl)("agent TLS flags", () => {
  beforeAll(() => {
    const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"];
    openssl("req", "-x509", ...ec, "-keyout", f("ca.key"), "-out", f("ca.crt"), "-subj", "/CN=ca");
    openssl("req", "-x509", ...ec, "-keyout", f("n1.key"), "-out", f("n1.crt"), "-subj", "/CN=n1");
    openssl("req", "-x509", ...ec, "-keyout", f("other.key"), "-out", f("other.crt"), "-subj", "/CN=other");
    writeFileSync(f("garbage.pem"), "this is not PEM\n");
  });

  it("accepts valid files", () => {
    expect(configError(["--tls-ca", f("ca.crt"), "--tls-cert", f("n1.crt"), "--tls-key", f("n1.key")])).toBeUndefined();
  });

  it.each([
    [() => ["--tls-ca", f("garbage.pem")], /--tls-ca: .* holds no PEM certificate/],
    [() => ["--tls-ca", f("ca.key")], /--tls-ca: .* holds no PEM certificate/],
    [() => ["--tls-ca", f("ca.crt"), "--tls-cert", f("garbage.pem"), "--tls-key", f("n1.key")], /--tls-cert: .* is not a PEM certificate/],
    [() => ["--tls-ca", f("ca.crt"), "--tls-cert", f("n1.crt"), "--tls-key", f("garbage.pem")], /--tls-key: .* is not a usable PEM private key/],
    [() => ["--tls-ca", f("ca.crt"), "--tls-cert", f("n1.crt"), "--tls-key", f("other.key")], /--tls-key: .* does not belong to the certificate/],
    [() => ["--tls-ca", dir], /--tls-ca: cannot read .* \(EISDIR\)/],
  ])("rejects bad files with CONFIG_INVALID naming the flag (%#)", (argv, re) => {
    const err = configError(argv());
    expect(err).toMatchObject({ code: "CONFIG_INVALID" });
    expect(err!.message).toMatch(re);
  });

  it("makes the process exit 2 with one line on stderr and no stack trace", () => {
    const r = spawnSync(process.execPath, ["--import", "tsx", "test/e2e/run-main.ts", "node-agent/src/main.ts",
      "--server", "198.18.0.254:7600", "--node-name", "n1", "--tls-ca", f("garbage.pem")], { cwd: ROOT, encoding: "utf8", timeout: 20_000 });
    expect(r.status).toBe(2);
    expect(r.stderr.trim()).toMatch(/^weft-agent: --tls-ca: .* holds no PEM certificate/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(r.stderr.trim().split("\n").length).toBe(1);
  });
});
