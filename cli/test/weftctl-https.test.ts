// weftctl over HTTPS: the real lease server with --http-tls-cert and
// --admin-client-ca (no token), certificates made in-process. The server's
// CA comes from --ca, the admin's identity from --cert/--key.
import "reflect-metadata";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startServer, writeNetConf, type ServerProcess } from "../../lease-server/test/server-process.js";
import { tempDir } from "../../lease-server/test/helpers.js";
import { TestCa } from "../../lease-server/test/identity-pki.js";
import { assertBuilt, oneLine, weftctl } from "./run-weftctl.js";

describe("weftctl over HTTPS with an admin client certificate (real process, real lease server)", () => {
  let dir: ReturnType<typeof tempDir>;
  let server: ServerProcess;
  let https: string;
  const file = (name: string) => join(dir.path, name);

  beforeAll(async () => {
    assertBuilt();
    dir = tempDir("weftctl-https-");
    const serverCa = await TestCa.create("weftctl-test-server-ca");
    const adminCa = await TestCa.create("weftctl-test-admin-ca");
    const leaf = await serverCa.leaf("weft-lease-server", [{ type: "ip", value: "127.0.0.1" }], x509.ExtendedKeyUsage.serverAuth);
    const adminCert = await adminCa.leaf("ops", [{ type: "dns", value: "ops" }], x509.ExtendedKeyUsage.clientAuth);
    writeFileSync(file("server-ca.crt"), serverCa.pem);
    writeFileSync(file("server.crt"), leaf.cert);
    writeFileSync(file("server.key"), leaf.key, { mode: 0o600 });
    writeFileSync(file("admin-ca.crt"), adminCa.pem);
    writeFileSync(file("admin.crt"), adminCert.cert);
    writeFileSync(file("admin.key"), adminCert.key, { mode: 0o600 });
    server = await startServer(["--insecure", "--store", `sqlite:${file("leases.db")}`, "--network-config", writeNetConf(dir.path),
      "--http-tls-cert", file("server.crt"), "--http-tls-key", file("server.key"), "--admin-client-ca", file("admin-ca.crt")]);
    https = server.httpUrl.replace(/^http:/, "https:");
  });
  afterAll(async () => {
    await server?.stop("SIGKILL");
    dir?.cleanup();
  });

  it("reserves and unreserves with --ca and the admin certificate, no token", async () => {
    const tls = ["--server-url", https, "--ca", file("server-ca.crt"), "--cert", file("admin.crt"), "--key", file("admin.key")];
    const r = await weftctl([...tls, "reserve", "10.244.5.0/24", "node-5"]);
    expect([r.code, r.stdout, r.stderr]).toEqual([0, "reserved 10.244.5.0/24 for node-5\n", ""]);
    const list = await weftctl(["--ca", file("server-ca.crt"), "-o", "json", "reservations"], { WEFT_SERVER_URL: https });
    expect(JSON.parse(list.stdout)).toEqual([{ subnet: "10.244.5.0/24", nodeName: "node-5" }]);
    expect((await weftctl([...tls, "unreserve", "10.244.5.0/24"])).code).toBe(0);
  });

  it("names the fix when TLS does not fit: no --ca (exit 3), http:// to an HTTPS server (exit 3), no credentials or half of them (exit 2)", async () => {
    const [untrusted, plain, noCreds, halfCert] = await Promise.all([
      weftctl(["--server-url", https, "nodes"]),
      weftctl(["--server-url", server.httpUrl, "--timeout", "3s", "nodes"]),
      weftctl(["--server-url", https, "--ca", file("server-ca.crt"), "revoke", "10.244.1.0/24"]),
      weftctl(["--server-url", https, "--cert", file("admin.crt"), "nodes"]),
    ]);
    expect(untrusted.code).toBe(3);
    expect(oneLine(untrusted.stderr)).toMatch(new RegExp(`^weftctl: cannot reach the lease server at ${https}: its TLS certificate is not trusted \\(.+\\); pass the CA that signed it with --ca FILE$`));
    expect(plain.code).toBe(3);
    expect(oneLine(plain.stderr)).toMatch(/if it serves HTTPS, use an https:\/\/ URL/);
    expect(noCreds.code).toBe(2);
    expect(oneLine(noCreds.stderr)).toMatch(/--admin-token-file FILE .* or over HTTPS an admin client certificate with --cert FILE --key FILE$/);
    expect(halfCert.code).toBe(2);
    expect(oneLine(halfCert.stderr)).toBe("weftctl: --cert and --key go together: pass the admin client certificate and its key, or neither");
  });
});
