// The systemd units a VM fleet installs: systemd itself checks them
// (systemd-analyze verify, and its security exposure score), and the tests hold
// the sandbox to what a reviewer accepted: the lease server as its own user with
// no capability and only its state dir writable, the agent with exactly the two
// capabilities it needs, configuration from /etc/weft/*.env naming real flags.
import { execFileSync, spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FLAGS as SERVER_FLAGS, loadServerConfig } from "../../lease-server/src/config.js";
import { FLAGS as AGENT_FLAGS, loadAgentConfig } from "../../node-agent/src/config.js";
import { findBin, requireTools } from "../tools.js";
import { envName } from "../../lib/src/flags.js";
import { envAssignments, parseUnitFile, setting, words, type UnitFile } from "./unit-file.js";

const ROOT = resolve(import.meta.dirname, "../..");
const read = (path: string) => readFileSync(join(ROOT, path), "utf8");
const UNITS = { server: "deploy/weft-lease-server.service", agent: "deploy/weft-agent.service" } as const;
const ENV_EXAMPLES = { server: "deploy/systemd/lease-server.env.example", agent: "deploy/systemd/agent.env.example" } as const;
const FLAGS = { server: SERVER_FLAGS, agent: AGENT_FLAGS } as const;
const unit = (which: keyof typeof UNITS): UnitFile => parseUnitFile(read(UNITS[which]));
const svc = "Service";

const tmp = mkdtempSync(join(tmpdir(), "weft-units-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** The units as installed, but with ExecStart= on this checkout's bin/ (verify wants the binaries to exist). */
function installedCopies(): string[] {
  return Object.values(UNITS).map((path) => {
    const out = join(tmp, path.split("/").pop()!);
    writeFileSync(out, read(path).replaceAll("/opt/weft/bin/", `${ROOT}/bin/`));
    return out;
  });
}

const haveSystemd = requireTools({ "systemd-analyze": "systemd" }, "verifying the systemd units");

describe.runIf(haveSystemd)("systemd checks the units", () => {
  it("systemd-analyze verify passes on both units without a warning", () => {
    const files = installedCopies();
    const r = spawnSync(findBin("systemd-analyze")!, ["verify", ...files], { encoding: "utf8" });
    // verify exits 0 on unknown keys and bad values too; they only show as messages naming the file.
    const ours = `${r.stdout}\n${r.stderr}`.split("\n").filter((l) => files.some((f) => l.includes(f)) || /weft-(agent|lease-server)\.service/.test(l));
    expect(ours).toEqual([]);
    expect(r.status).toBe(0);
  });

  // Offline scoring (systemd 250+) reads the file without loading it. The README quotes the scores.
  it.each([["weft-lease-server.service", 1.2], ["weft-agent.service", 2.4]])("systemd-analyze security rates %s at most %s", (name, max) => {
    installedCopies();
    const out = execFileSync(findBin("systemd-analyze")!, ["security", "--offline=true", "--no-pager", join(tmp, name)], { encoding: "utf8" });
    const score = Number(/Overall exposure level for \S+: ([\d.]+)/.exec(out)?.[1]);
    expect(score).toBeLessThanOrEqual(max);
  });
});

describe("lease server unit", () => {
  const u = unit("server");

  it("runs as its own user with no capability", () => {
    const user = setting(u, svc, "User")?.at(-1);
    expect(setting(u, svc, "DynamicUser")?.at(-1) === "yes" || (user !== undefined && user !== "root" && user !== "0")).toBe(true);
    expect(setting(u, svc, "CapabilityBoundingSet")).toEqual([]);
    expect(words(u, svc, "AmbientCapabilities")).toEqual([]);
    expect(setting(u, svc, "NoNewPrivileges")).toEqual(["yes"]);
    // Netlink only for getifaddrs (REST on 0.0.0.0 lists the host's addresses); nothing else.
    expect(words(u, svc, "RestrictAddressFamilies").sort()).toEqual(["AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"]);
  });

  it("can write only its state dir, where its store and node CA live", () => {
    expect(setting(u, svc, "ProtectSystem")).toEqual(["strict"]);
    expect(setting(u, svc, "ReadWritePaths") ?? []).toEqual([]);
    expect(setting(u, svc, "RuntimeDirectory") ?? []).toEqual([]);
    expect(words(u, svc, "StateDirectory")).toEqual(["weft-lease-server"]);
    const env = new Map(words(u, svc, "Environment").map((kv) => kv.split("=", 2) as [string, string]));
    expect(env.get("WEFT_STORE")).toBe("sqlite:/var/lib/weft-lease-server/leases.db");
    expect(env.get("WEFT_STATE_DIR")).toBe("/var/lib/weft-lease-server");
  });

  it("gets its key and admin token as credentials, not by reading root's files", () => {
    const creds = new Map((setting(u, svc, "LoadCredential") ?? []).map((c) => c.split(":", 2) as [string, string]));
    const exec = setting(u, svc, "ExecStart")![0]!;
    for (const [flag, cred] of [["tls-key", "tls.key"], ["tls-cert", "tls.crt"], ["admin-token-file", "admin-token"]]) {
      expect(creds.has(cred!), cred).toBe(true);
      expect(exec).toContain(`--${flag} %d/${cred}`);
    }
  });
});

describe("agent unit", () => {
  const u = unit("agent");

  it("holds exactly CAP_NET_ADMIN and CAP_NET_RAW", () => {
    expect(words(u, svc, "CapabilityBoundingSet").sort()).toEqual(["CAP_NET_ADMIN", "CAP_NET_RAW"]);
    expect(words(u, svc, "AmbientCapabilities").every((c) => ["CAP_NET_ADMIN", "CAP_NET_RAW"].includes(c))).toBe(true);
    expect(setting(u, svc, "NoNewPrivileges")).toEqual(["yes"]);
    expect(words(u, svc, "RestrictAddressFamilies").sort()).toEqual(["AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"]);
  });

  it("can write only its state dir, subnet.env's dir, wireguard-go's sockets and the xtables lock", () => {
    expect(setting(u, svc, "ProtectSystem")).toEqual(["strict"]);
    expect(words(u, svc, "StateDirectory").map((d) => `/var/lib/${d}`)).toEqual([AGENT_FLAGS["state-dir"].default]);
    expect(words(u, svc, "RuntimeDirectory").map((d) => `/run/${d}`).sort()).toEqual([dirname(AGENT_FLAGS["subnet-file"].default), "/run/wireguard"]);
    expect(setting(u, svc, "RuntimeDirectoryPreserve")).toEqual(["yes"]);
    expect(words(u, svc, "ReadWritePaths")).toEqual(["-/run/xtables.lock"]);
    expect(setting(u, svc, "DeviceAllow")).toEqual(["/dev/net/tun rw"]);
  });

  it("leaves wireguard-go running across its own restarts", () => {
    expect(setting(u, svc, "KillMode")).toEqual(["process"]);
    expect(read(UNITS.agent)).toMatch(/wireguard-go, which must outlive an agent restart/);
  });
});

describe.each(["server", "agent"] as const)("%s unit: restarts and configuration", (which) => {
  const u = unit(which);
  const known = new Set(Object.keys(FLAGS[which]).map(envName));

  it("restarts after a failure with a delay, never giving up, but not on bad flags (exit 2)", () => {
    expect(setting(u, svc, "Restart")?.at(-1)).toMatch(/^(on-failure|always)$/);
    expect(Number.parseFloat(setting(u, svc, "RestartSec")?.at(-1) ?? "0")).toBeGreaterThanOrEqual(1);
    expect(setting(u, svc, "RestartPreventExitStatus")).toEqual(["2"]);
    expect(setting(u, "Unit", "StartLimitIntervalSec")).toEqual(["0"]);
  });

  it("reads /etc/weft/*.env, and every flag and WEFT_ variable it names is a real flag", () => {
    expect(setting(u, svc, "EnvironmentFile")?.map((f) => f.replace(/^-/, ""))).toEqual([`/etc/weft/${which === "server" ? "lease-server" : "agent"}.env`]);
    const exec = setting(u, svc, "ExecStart")![0]!;
    for (const m of exec.matchAll(/\s--([a-z0-9-]+)/g)) expect(Object.keys(FLAGS[which]), `--${m[1]}`).toContain(m[1]);
    const vars = [...words(u, svc, "Environment").map((kv) => kv.split("=")[0]!), ...envAssignments(read(ENV_EXAMPLES[which]), true).keys()];
    expect(vars.length).toBeGreaterThan(3);
    for (const v of vars) expect(known.has(v), `${v} in ${which}'s unit or env example names no flag of ${which === "server" ? "weft-lease-server" : "weft-agent"}`).toBe(true);
  });

  it("gives booleans true or false in the env example", () => {
    const env = envAssignments(read(ENV_EXAMPLES[which]), true);
    for (const [name, spec] of Object.entries(FLAGS[which])) {
      const v = env.get(envName(name));
      if (v !== undefined && spec.type === "boolean") expect(v, envName(name)).toMatch(/^(true|false)$/);
    }
  });
});

describe("the env examples as installed", () => {
  // Their files, made where the examples and units expect them but under a temp dir.
  const etc = join(tmp, "etc/weft");
  const creds = join(tmp, "credentials");
  const pki = join(tmp, "pki");
  const moved = (v: string) => v.replaceAll("/etc/weft/", `${etc}/`);
  const envOf = (which: keyof typeof UNITS) => Object.fromEntries([
    ...words(unit(which), svc, "Environment").map((kv) => kv.split("=", 2) as [string, string]),
    ...envAssignments(read(ENV_EXAMPLES[which])),
  ].map(([k, v]) => [k, moved(v)]));

  // A CA, a server certificate and an admin token, as compose's init makes them.
  beforeAll(() => void execFileSync(process.execPath, [join(ROOT, "deploy/compose/init.mjs"), pki], { stdio: "pipe" }));

  it("give the lease server a valid config with the unit's command line and credentials", () => {
    mkdirSync(creds, { recursive: true, mode: 0o700 });
    mkdirSync(etc, { recursive: true });
    for (const [from, to] of [["server.crt", "tls.crt"], ["server.key", "tls.key"], ["admin-token", "admin-token"]]) copyFileSync(join(pki, from!), join(creds, to!));
    copyFileSync(join(ROOT, "deploy/net-conf.json"), join(etc, "net-conf.json"));
    const argv = setting(unit("server"), svc, "ExecStart")![0]!.split(/\s+/).slice(1).map((a) => a.replaceAll("%d", creds));
    const warnings: string[] = [];
    const cfg = loadServerConfig(argv, envOf("server"), (w) => warnings.push(w));
    expect(warnings).toEqual([]);
    expect(cfg?.store).toEqual({ kind: "sqlite", path: "/var/lib/weft-lease-server/leases.db" });
    expect(cfg?.identity?.stateDir).toBe("/var/lib/weft-lease-server");
  });

  it("give the agent a valid config with the join-token flow", () => {
    mkdirSync(join(etc, "tls"), { recursive: true });
    copyFileSync(join(pki, "tls-ca.crt"), join(etc, "tls/ca.crt"));
    writeFileSync(join(etc, "join-token"), "abcdef.0123456789abcdef\n", { mode: 0o600 });
    const warnings: string[] = [];
    const cfg = loadAgentConfig([], envOf("agent"), (w) => warnings.push(w));
    expect(warnings).toEqual([]);
    expect(cfg && "servers" in cfg ? cfg.servers : undefined).toEqual(["lease1.example:7600", "lease2.example:7600"]);
    expect(cfg && "join" in cfg ? cfg.join : undefined).toBeDefined();
  });
});
