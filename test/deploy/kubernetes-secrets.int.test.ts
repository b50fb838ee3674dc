// The daemons on the Kubernetes manifests' flags, with the files
// make-secrets.sh makes: both lease server variants and the agent load with
// their own config loaders, and the SQLite lease server started from its
// manifest answers its probes over HTTPS, makes a join token only with the
// admin token, and a node trades the token for its own certificate;
// make-secrets.sh join-token runs against it with a stand-in kubectl.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parse as parseYaml } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FLAGS as SERVER_FLAGS, loadServerConfig } from "../../lease-server/src/config.js";
import { FLAGS as AGENT_FLAGS, loadAgentConfig } from "../../node-agent/src/config.js";
import { NodeIdentity } from "../../node-agent/src/identity.js";
import { createLogger } from "../../lib/src/logger.js";
import { requireTools } from "../tools.js";
import { expandVars, serviceEnv } from "./k8s-schema.js";
import { CLUSTER_IP, DIR, ROOT, agent, agentDs, byKind, container, flag, flagsOf, podSpec, serverHa, serverSts, service, volumeFor, type Json } from "./k8s-manifests.js";

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/**
 * The files a container sees, laid out in a temp dir: Secrets and ConfigMaps from make-secrets.sh's
 * --out layout (or the manifests), host paths and claims as empty directories.
 */
class PodFiles {
  constructor(private readonly root: string, private readonly secrets: string) {}

  /** Maps every absolute path in the container's flag values to where its volume's files are. */
  args(w: Json, c: Json, env: Record<string, string>, extra: (name: string, value: string) => string | undefined = () => undefined): string[] {
    return flagsOf(c.args.map((a: string) => expandVars(a, env))).map(([name, value]) => {
      if (value === undefined) return `--${name}`;
      const over = extra(name, value);
      if (over !== undefined) return `--${name}=${over}`;
      // Flags whose value is a file or directory (by their --help placeholder), and the SQLite store.
      const spec = ((c.command[0] as string).endsWith("weft-agent") ? AGENT_FLAGS : SERVER_FLAGS) as Record<string, { value?: string }>;
      const isPath = /\b(FILE|DIR|PATH)\b/.test(spec[name]?.value ?? "") || name === "store";
      const m = isPath ? /^(sqlite:)?(\/.*)$/.exec(value) : null;
      return `--${name}=${m ? (m[1] ?? "") + this.path(w, c, m[2]!) : value}`;
    });
  }

  private path(w: Json, c: Json, p: string): string {
    const { mount, volume } = volumeFor(w, c, p);
    const dir = join(this.root, w.metadata.name, volume.name);
    if (!existsSync(dir)) {
      mkdirSync(dir, { recursive: true });
      const from = volume.secret?.secretName ?? volume.configMap?.name;
      const inManifests = volume.configMap && byKind("ConfigMap", from).length > 0;
      if (inManifests) for (const [k, v] of Object.entries(byKind("ConfigMap", from)[0]!.data as Record<string, string>)) writeFileSync(join(dir, k), v);
      else if (from) {
        const src = join(this.secrets, from);
        if (!existsSync(src)) throw new Error(`${w.metadata.name}: ${from} is neither made by make-secrets.sh nor provided by the test`);
        for (const k of readdirNames(src)) copyFileSync(join(src, k), join(dir, k));
      }
    }
    return dir + p.slice(mount.mountPath.length);
  }
}

const readdirNames = (dir: string): string[] => readdirSync(dir).sort();

describe("Kubernetes manifests with the files make-secrets.sh makes", () => {
  const ok = requireTools({ openssl: "openssl" }, "make-secrets.sh");
  let tmp = "";
  let secrets = "";

  beforeAll(() => {
    if (!ok) return;
    tmp = mkdtempSync(join(tmpdir(), "weft-k8s-"));
    secrets = join(tmp, "secrets");
    const r = spawnSync(join(DIR, "make-secrets.sh"), ["certs", "--out", secrets, "--cluster-ip", CLUSTER_IP], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`make-secrets.sh certs failed: ${r.stderr}`);
    // What the cluster provides besides make-secrets.sh: the join token (from the server), etcd's client files.
    mkdirSync(join(secrets, "weft-join-token"));
    writeFileSync(join(secrets, "weft-join-token", "token"), "k3x9qa.8hd0w2mzp4c7v1ny");
    mkdirSync(join(secrets, "lease-server-etcd-client"));
    for (const f of ["ca.crt", "tls.crt", "tls.key"]) writeFileSync(join(secrets, "lease-server-etcd-client", f), "etcd's\n");
  });
  afterAll(() => {
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  /** The prepare init container's effect: the admin token copied with mode 600 (the test runs as one user). */
  function prepareAdminToken(files: PodFiles, w: Json): string[] {
    // What the init container does, read from its script: the Secret's file, to the path the server reads, as the server's user.
    const prepare = podSpec(w).initContainers.find((c: Json) => c.name === "prepare");
    const m = / install -o (\d+) -g (\d+) -m 600 (\S+) ([^\s;]+)/.exec(prepare.command.join(" "));
    expect(m, "prepare installs the admin token with mode 600").not.toBeNull();
    const sc = podSpec(w).securityContext;
    expect([Number(m![1]), Number(m![2])]).toEqual([sc.runAsUser, sc.runAsGroup]);
    expect(volumeFor(w, prepare, m![3]!).volume.secret?.secretName).toBe("lease-server-admin-token");
    expect(flag(container(w, "lease-server"), "admin-token-file")).toBe(m![4]);
    expect(volumeFor(w, prepare, m![4]!).volume.name).toBe(volumeFor(w, container(w, "lease-server"), m![4]!).volume.name);
    const args = files.args(w, container(w, "lease-server"), {});
    const tokenFile = flagsOf(args).find(([n]) => n === "admin-token-file")![1]!;
    copyFileSync(join(secrets, "lease-server-admin-token", "admin-token"), tokenFile);
    chmodSync(tokenFile, 0o600);
    return args;
  }

  it.skipIf(!ok)("the server certificate is for the Service's ClusterIP and loopback (port-forward), signed by the CA agents get", () => {
    const cert = new X509Certificate(readFileSync(join(secrets, "lease-server-tls", "tls.crt")));
    const ca = new X509Certificate(readFileSync(join(secrets, "lease-server-ca", "ca.crt")));
    expect(cert.verify(ca.publicKey)).toBe(true);
    expect(cert.checkIP(CLUSTER_IP)).toBe(CLUSTER_IP);
    expect(cert.checkIP("127.0.0.1")).toBe("127.0.0.1");
    expect(cert.checkHost("lease-server.weft.svc")).toBe("lease-server.weft.svc");
    expect(ca.ca).toBe(true);
    expect(existsSync(join(secrets, "lease-server-ca", "ca.key"))).toBe(false);
    expect(readdirNames(join(secrets, "lease-server-ca"))).toEqual(["ca.crt"]);
  });

  it.skipIf(!ok)("both lease server variants' flags load with the lease server's own config loader", () => {
    for (const w of [serverSts(), serverHa()]) {
      const files = new PodFiles(join(tmp, `load-${w.kind}`), secrets);
      const cfg = loadServerConfig(prepareAdminToken(files, w));
      expect(cfg, w.kind).toBeDefined();
      expect(cfg!.tls).toBeDefined();
      expect(cfg!.httpTls).toBeDefined();
      expect(cfg!.adminToken).toHaveLength(44);
      expect(cfg!.identity.caCert).toBeDefined();
      expect(cfg!.store.kind).toBe(w.kind === "StatefulSet" ? "sqlite" : "etcd");
    }
  });

  it.skipIf(!ok)("the agent's flags, with the Service's variables, load with the agent's own config loader", () => {
    const files = new PodFiles(join(tmp, "load-agent"), secrets);
    const env = { ...serviceEnv(service(), CLUSTER_IP), NODE_NAME: "node-1" };
    const cfg = loadAgentConfig(files.args(agentDs(), agent(), env));
    expect(cfg && !cfg.cleanup).toBe(true);
    if (!cfg || cfg.cleanup) return;
    expect(cfg.servers).toEqual([`${CLUSTER_IP}:7600`]);
    expect(cfg.nodeName).toBe("node-1");
    expect(cfg.join?.token).toBe("k3x9qa.8hd0w2mzp4c7v1ny");
    expect(cfg.metricsListen).toMatchObject({ host: "0.0.0.0", port: 9465 });
  });

  describe.skipIf(!ok)("the SQLite lease server started from its manifest", () => {
    let proc: ChildProcess | undefined;
    let log = "";
    let grpcPort = 0;
    let httpPort = 0;
    const ca = () => readFileSync(join(secrets, "lease-server-ca", "ca.crt"));

    function https(method: string, path: string, headers: Record<string, string> = {}, body?: string): Promise<{ status: number; body: string }> {
      return new Promise((resolve, reject) => {
        const req = request({ host: "127.0.0.1", port: httpPort, method, path, ca: ca(), headers, timeout: 5000 }, (res) => {
          let text = "";
          res.setEncoding("utf8");
          res.on("data", (d: string) => { text += d; });
          res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text }));
        });
        req.on("timeout", () => req.destroy(new Error("timeout")));
        req.on("error", reject);
        req.end(body);
      });
    }

    beforeAll(async () => {
      const w = serverSts();
      const files = new PodFiles(join(tmp, "run"), secrets);
      prepareAdminToken(files, w);
      grpcPort = await freePort();
      httpPort = await freePort();
      // Only the addresses change: loopback and free ports instead of the node's 7600/7601.
      const args = files.args(w, container(w, "lease-server"), {}, (name) =>
        name === "listen" ? `127.0.0.1:${grpcPort}` : name === "http-listen" ? `127.0.0.1:${httpPort}` : undefined);
      proc = spawn(process.execPath, ["--import", "tsx", join(ROOT, "test/e2e/run-main.ts"), join(ROOT, "lease-server/src/main.ts"), ...args], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
      proc.stdout!.on("data", (d: Buffer) => { log += d.toString(); });
      proc.stderr!.on("data", (d: Buffer) => { log += d.toString(); });
      const deadline = Date.now() + 45_000;
      for (;;) {
        if (proc.exitCode !== null) throw new Error(`the lease server exited ${proc.exitCode}: ${log}`);
        const r = await https("GET", "/readyz").catch(() => undefined);
        if (r?.status === 200) break;
        if (Date.now() > deadline) throw new Error(`the lease server was not ready in 45 s: ${log}`);
        await new Promise((r) => setTimeout(r, 250));
      }
    }, 60_000);

    afterAll(async () => {
      if (proc && proc.exitCode === null) {
        const exited = new Promise((r) => proc!.once("exit", r));
        proc.kill("SIGTERM");
        await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
        if (proc.exitCode === null) proc.kill("SIGKILL");
      }
    });

    it("answers the manifest's probes over HTTPS on its https port", async () => {
      const c = container(serverSts(), "lease-server");
      for (const probe of ["startupProbe", "livenessProbe", "readinessProbe"]) {
        expect(c[probe].httpGet.scheme).toBe("HTTPS");
        expect((await https("GET", c[probe].httpGet.path)).status, probe).toBe(200);
      }
    });

    it("makes a join token only with the admin token, and a node trades it for its own certificate", { timeout: 60_000 }, async () => {
      const body = JSON.stringify({ ttl: "1h", uses: 2 });
      const json = { "content-type": "application/json" };
      expect((await https("POST", "/v1/join-tokens", json, body)).status).toBe(401);
      const admin = readFileSync(join(secrets, "lease-server-admin-token", "admin-token"), "utf8").trim();
      const made = await https("POST", "/v1/join-tokens", { ...json, authorization: `Bearer ${admin}` }, body);
      expect(made.status, made.body).toBe(201);
      const token = (JSON.parse(made.body) as { token: string }).token;

      const stateDir = join(tmp, "node-1-state");
      const caFile = join(secrets, "lease-server-ca", "ca.crt");
      const identity = new NodeIdentity({ nodeName: "node-1", stateDir, servers: [`127.0.0.1:${grpcPort}`], caFile, joinToken: token, log: createLogger("agent", "silent") });
      await identity.ensure(AbortSignal.timeout(30_000));
      const cert = new X509Certificate(readFileSync(identity.tls.cert!));
      expect(cert.subject).toContain("node-1");
      expect(cert.verify(new X509Certificate(readFileSync(join(secrets, "lease-server-node-ca", "tls.crt"))).publicKey)).toBe(true);
    });

    it("make-secrets.sh join-token gets a token from the server and stores it for the agents", { timeout: 60_000 }, async () => {
      if (!requireTools({ curl: "curl" }, "make-secrets.sh join-token")) return;
      // The cluster's API is the one thing not here: a stand-in kubectl answers what the script asks
      // (its port-forward is the server's own port on loopback, as port-forward gives it).
      const bin = join(tmp, "fake-bin");
      mkdirSync(bin, { recursive: true });
      writeFileSync(join(bin, "kubectl"), `#!/bin/sh
case "$*" in
  "get nodes --no-headers") printf 'node-1 Ready\\nnode-2 Ready\\nnode-3 Ready\\n' ;;
  *"get configmap lease-server-ca "*) cat "${secrets}/lease-server-ca/ca.crt" ;;
  *"get secret lease-server-admin-token "*) base64 < "${secrets}/lease-server-admin-token/admin-token" | tr -d '\\n' ;;
  *"port-forward service/lease-server ${httpPort}:7601") exec sleep 60 ;;
  *"create secret generic weft-join-token "*"--dry-run=client -o yaml")
    for a in "$@"; do case "$a" in --from-literal=token=*) echo "token: \${a#--from-literal=token=}" ;; esac; done ;;
  "apply -f -") cat > "${tmp}/applied.yaml" ;;
  *) echo "stand-in kubectl: unexpected: $*" >&2; exit 1 ;;
esac
`, { mode: 0o755 });
      const r = await new Promise<{ code: number | null; out: string }>((resolve) => {
        const p = spawn(join(DIR, "make-secrets.sh"), ["join-token", "--ttl", "2h"], { env: { ...process.env, PATH: `${bin}:${process.env.PATH}`, LOCAL_PORT: String(httpPort) } });
        let out = "";
        p.stdout.on("data", (d: Buffer) => { out += d.toString(); });
        p.stderr.on("data", (d: Buffer) => { out += d.toString(); });
        p.on("close", (code) => resolve({ code, out }));
      });
      expect(r.code, r.out).toBe(0);
      expect(r.out).toContain("a token for 3 node(s), valid 2h");
      const token = (parseYaml(readFileSync(join(tmp, "applied.yaml"), "utf8")) as { token: string }).token;
      expect(token).toMatch(/^[a-z0-9]{6}\.[a-z0-9]{16}$/);
      const identity = new NodeIdentity({ nodeName: "node-2", stateDir: join(tmp, "node-2-state"), servers: [`127.0.0.1:${grpcPort}`], caFile: join(secrets, "lease-server-ca", "ca.crt"), joinToken: token, log: createLogger("agent", "silent") });
      await identity.ensure(AbortSignal.timeout(30_000));
      expect(new X509Certificate(readFileSync(identity.tls.cert!)).subject).toContain("node-2");
    });
  });
});
