import { describe, expect, it } from "vitest";
import { loadAgentConfig } from "../src/config.js";

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
