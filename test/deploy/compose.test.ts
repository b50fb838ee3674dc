// compose.yaml, read as compose reads it (there is no `docker compose` on the
// test machines): the default control plane is the SQLite lease server and its
// one-shot init; profile ha is a 3-member etcd cluster and two lease servers on
// it. compose-servers.int.test.ts runs the lease servers' commands for real.
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { FLAGS } from "../../lease-server/src/config.js";
import { composeFlags, type Compose, type Service } from "./compose-file.js";

const ROOT = resolve(import.meta.dirname, "../..");
const compose = parse(readFileSync(join(ROOT, "compose.yaml"), "utf8")) as Compose;
const services = Object.entries(compose.services);
const svc = (name: string): Service => compose.services[name]!;
const inProfile = (p: string | undefined) => services.filter(([, s]) => (p === undefined ? !s.profiles : s.profiles?.includes(p))).map(([n]) => n);
const LEASE_SERVERS = ["lease-server", "lease-server-1", "lease-server-2"];
const ETCD = ["etcd-1", "etcd-2", "etcd-3"];

/** Host ports a service publishes: [hostIp or "", hostPort, containerPort]. */
function published(s: Service): [string, string, string][] {
  return (s.ports ?? []).map((p) => {
    const parts = String(p).split(":");
    return parts.length === 3 ? [parts[0]!, parts[1]!, parts[2]!] : ["", parts[0]!, parts[1]!];
  });
}

describe("compose.yaml", () => {
  it("starts the SQLite lease server and its init by default, and etcd with two lease servers in profile ha", () => {
    expect(inProfile(undefined).sort()).toEqual(["init", "lease-server"]);
    expect(inProfile("ha").sort()).toEqual([...ETCD, "lease-server-1", "lease-server-2"]);
    expect(composeFlags(svc("lease-server")).get("store")).toMatch(/^sqlite:/);
  });

  it.each(LEASE_SERVERS)("%s: every flag is a real flag, TLS on, admin token set, ready-checked, and waits for init", (name) => {
    const s = svc(name);
    const flags = composeFlags(s);
    for (const f of flags.keys()) expect(Object.keys(FLAGS), `--${f} of ${name}`).toContain(f);
    expect(flags.has("insecure")).toBe(false);
    for (const f of ["tls-cert", "tls-key", "ca-cert", "ca-key", "admin-token-file", "network-config"]) expect(flags.has(f), `--${f}`).toBe(true);
    // REST beyond the container's loopback is refused without an admin credential; from the host it is loopback only.
    expect(flags.get("http-listen")).toBe("0.0.0.0:7601");
    expect(published(s).filter(([, , c]) => c === "7601").map(([ip]) => ip)).toEqual(["127.0.0.1"]);
    expect(s.healthcheck?.test.join(" ")).toContain("http://127.0.0.1:7601/readyz");
    expect(s.depends_on?.init?.condition).toBe("service_completed_successfully");
    expect(s.image).toBe(svc("init").image);
  });

  it("the files the lease servers are given are where init writes them, read-only to the servers", () => {
    const initMount = svc("init").volumes!.find((v) => v.endsWith(":/etc/weft/pki"))!;
    const volume = initMount.split(":")[0]!;
    expect(svc("init").entrypoint).toContain("/etc/weft/pki");
    for (const name of LEASE_SERVERS) {
      const flags = composeFlags(svc(name));
      for (const f of ["tls-cert", "tls-key", "ca-cert", "ca-key", "admin-token-file"]) expect(flags.get(f), `${name} --${f}`).toMatch(/^\/etc\/weft\/pki\/[a-z.-]+$/);
      expect(svc(name).volumes).toContain(`${volume}:/etc/weft/pki:ro`);
      expect(svc(name).volumes).toContain("./deploy/net-conf.json:/etc/weft/net-conf.json:ro");
    }
  });

  it("the etcd members form one cluster: names, peer URLs and --initial-cluster agree", () => {
    const cluster = ETCD.map((n) => `${n}=http://${n}:2380`).join(",");
    for (const n of ETCD) {
      const s = svc(n);
      const f = composeFlags(s);
      expect(s.image).toMatch(/^[\w./-]+\/etcd:v3\.5\.\d+$/);
      expect(f.get("name")).toBe(n);
      expect(f.get("initial-advertise-peer-urls")).toBe(`http://${n}:2380`);
      expect(f.get("advertise-client-urls")).toBe(`http://${n}:2379`);
      expect(f.get("initial-cluster")).toBe(cluster);
      expect(f.get("initial-cluster-state")).toBe("new");
      expect(f.get("initial-cluster-token")).toBe(composeFlags(svc("etcd-1")).get("initial-cluster-token"));
      const dataVolume = s.volumes!.find((v) => f.get("data-dir")!.startsWith(`${v.split(":")[1]}/`));
      expect(dataVolume, `${n}: --data-dir inside a volume`).toBeDefined();
      expect(s.healthcheck?.test).toContain("etcdctl");
    }
  });

  it("the two HA lease servers share the etcd cluster, the CA and the net-conf, and start on a healthy etcd", () => {
    const [a, b] = ["lease-server-1", "lease-server-2"].map((n) => composeFlags(svc(n)));
    expect(a!.get("store")).toBe(`etcd:${ETCD.map((n) => `http://${n}:2379`).join(",")}`);
    for (const f of ["store", "ca-cert", "ca-key", "tls-cert", "network-config"]) expect(b!.get(f), f).toBe(a!.get(f));
    for (const n of ["lease-server-1", "lease-server-2"]) {
      for (const e of ETCD) expect(svc(n).depends_on?.[e]?.condition, `${n} -> ${e}`).toBe("service_healthy");
    }
  });

  it("publishes no host port twice, declares every named volume and mounts only files that exist", () => {
    const ports = services.flatMap(([, s]) => published(s).map(([, h]) => h));
    expect(new Set(ports).size).toBe(ports.length);
    for (const [name, s] of services) {
      for (const v of s.volumes ?? []) {
        const src = v.split(":")[0]!;
        if (src.startsWith(".")) expect(existsSync(join(ROOT, src)), `${name}: ${src}`).toBe(true);
        else expect(Object.keys(compose.volumes ?? {}), `${name}: volume ${src}`).toContain(src);
      }
    }
  });

  it("runs the control plane only: no agent, nothing privileged", () => {
    for (const [name, s] of services) {
      expect(name).not.toMatch(/agent/);
      expect(s.privileged ?? false).toBe(false);
      expect(s.network_mode).toBeUndefined();
      expect(s.cap_add ?? []).toEqual([]);
    }
  });
});
