// deploy/kubernetes, offline: every manifest against the Kubernetes API types
// (kubernetes-models, plus a strict unknown-field walk) and the invariants a
// fresh cluster needs: host network, no cluster DNS, tolerations, the Flannel
// CNI plugin and conflist installed, probes, per-node identity from a join
// token, scrape annotations, pinned images, real flags. The daemons running on
// these manifests' flags: kubernetes-secrets.int.test.ts.
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parse as parseYaml } from "yaml";
import { describe, expect, it } from "vitest";
import { FLAGS as SERVER_FLAGS } from "../../lease-server/src/config.js";
import { FLAGS as AGENT_FLAGS } from "../../node-agent/src/config.js";
import { envName } from "../../lib/src/flags.js";
import { parseNetworkConfig } from "../../lib/src/net-config.js";
import { expandVars, serviceEnv, validateWithModel, type K8sObject } from "./k8s-schema.js";
import { CLUSTER_IP, DIR, NS, agent, agentDs, all, byKind, container, docs, flag, flagsOf, one, podSpec, serverHa, serverSts, servers, service, strict, volumeFor, workloads, type Json } from "./k8s-manifests.js";

const readdirNames = (dir: string): string[] => readdirSync(dir).sort();

describe("Kubernetes manifests: API schema", () => {
  it("finds the manifests", () => {
    expect(new Set(docs.map((d) => d.file))).toEqual(new Set(["namespace.yaml", "lease-server-service.yaml", "lease-server.yaml", "lease-server-pv.yaml", "lease-server-etcd.yaml", "weft-agent.yaml"]));
  });

  it("every document is a valid object of its kind (kubernetes-models)", async () => {
    for (const d of docs) {
      await expect(validateWithModel(d.obj), `${d.file}: ${d.obj.kind} ${d.obj.metadata?.name}`).resolves.toBeUndefined();
    }
  });

  it("no document has a field its kind does not declare", { timeout: 60_000 }, () => {
    for (const d of docs) expect(strict().unknownFields(d.obj), `${d.file}: ${d.obj.kind} ${d.obj.metadata.name}`).toEqual([]);
  });

  it("the strict walk finds a misspelt field at any depth", { timeout: 60_000 }, () => {
    const ds = structuredClone(agentDs()) as K8sObject & Json;
    ds.spec.template.spec.tolerration = [];
    ds.spec.template.spec.containers[0].securityContext.capabilites = {};
    ds.metadata.labels!.anything = "labels are a map";
    expect(strict().unknownFields(ds)).toEqual(["spec.template.spec.containers[0].securityContext.capabilites", "spec.template.spec.tolerration"]);
  });

  it("namespaced objects are in the weft namespace, which admits privileged pods", () => {
    const ns = one("Namespace", NS);
    expect(ns.metadata.labels["pod-security.kubernetes.io/enforce"]).toBe("privileged");
    for (const o of all.filter((o) => !["Namespace", "PersistentVolume"].includes(o.kind))) expect(o.metadata.namespace, `${o.kind} ${o.metadata.name}`).toBe(NS);
  });

  it("kustomization.yaml lists the SQLite setup: every manifest but the etcd variant", () => {
    const k = parseYaml(readFileSync(join(DIR, "kustomization.yaml"), "utf8")) as { resources: string[] };
    expect(new Set(k.resources)).toEqual(new Set(["namespace.yaml", "lease-server-service.yaml", "lease-server-pv.yaml", "lease-server.yaml", "weft-agent.yaml"]));
  });
});

describe("Kubernetes manifests: what a fresh cluster needs", () => {
  it("the lease server and the agent run on the host network and resolve names without cluster DNS", () => {
    for (const w of workloads()) {
      expect(podSpec(w).hostNetwork, `${w.kind} ${w.metadata.name}`).toBe(true);
      // ClusterFirstWithHostNet (or the default ClusterFirst) would ask CoreDNS, which needs the pod network.
      expect(podSpec(w).dnsPolicy, `${w.kind} ${w.metadata.name}`).toBe("Default");
    }
  });

  it("the agent runs on every node with every taint, at system-node-critical", () => {
    const spec = podSpec(agentDs());
    expect(spec.tolerations).toContainEqual({ operator: "Exists" });
    expect(spec.tolerations.find((t: Json) => t.operator === "Exists" && !t.key && !t.effect)).toBeDefined();
    expect(spec.priorityClassName).toBe("system-node-critical");
    expect(spec.nodeSelector).toBeUndefined();
  });

  it("the lease server stays on NotReady nodes: every node is NotReady until its agent runs", () => {
    for (const w of [serverSts(), serverHa()]) {
      const tol = podSpec(w).tolerations as Json[];
      expect(tol).toContainEqual({ operator: "Exists", effect: "NoSchedule" });
      expect(tol).toContainEqual({ key: "node.kubernetes.io/not-ready", operator: "Exists", effect: "NoExecute" });
      expect(podSpec(w).priorityClassName).toBe("system-cluster-critical");
    }
  });

  it("the agent has NET_ADMIN and NET_RAW, and no privilege beyond them", () => {
    const sc = agent().securityContext;
    expect(sc.privileged).toBe(false);
    expect(sc.allowPrivilegeEscalation).toBe(false);
    expect(sc.capabilities.drop).toEqual(["ALL"]);
    expect([...sc.capabilities.add].sort()).toEqual(["NET_ADMIN", "NET_RAW"]);
    // The weft image's default user is not root, and added capabilities only take effect for root.
    expect(sc.runAsUser).toBe(0);
  });

  it("no container is privileged; the lease server runs as a non-root user with no capabilities", () => {
    for (const w of workloads()) for (const c of [...podSpec(w).containers, ...(podSpec(w).initContainers ?? [])]) expect(c.securityContext?.privileged ?? false, c.name).toBe(false);
    for (const w of [serverSts(), serverHa()]) {
      expect(podSpec(w).securityContext.runAsNonRoot).toBe(true);
      expect(podSpec(w).securityContext.runAsUser).toBeGreaterThan(0);
      const sc = container(w, "lease-server").securityContext;
      expect(sc.capabilities).toEqual({ drop: ["ALL"] });
      expect(sc.readOnlyRootFilesystem).toBe(true);
      expect(sc.runAsUser ?? podSpec(w).securityContext.runAsUser).toBeGreaterThan(0);
    }
  });

  it("an init container installs Flannel's CNI plugin from its pinned upstream image, and the conflist", () => {
    const init = podSpec(agentDs()).initContainers.find((c: Json) => c.image.includes("flannel-cni-plugin"));
    expect(init, "an init container with the flannel-cni-plugin image").toBeDefined();
    expect(init.image).toMatch(/^ghcr\.io\/flannel-io\/flannel-cni-plugin:v\d+\.\d+\.\d+-flannel\d+$/);
    // Run its script with each mount mapped to a directory, as the kubelet would bind it.
    const tmp = mkdtempSync(join(tmpdir(), "weft-cni-"));
    try {
      const image = join(tmp, "image");
      mkdirSync(image);
      writeFileSync(join(image, "flannel"), "#!/bin/sh\n# stands in for the plugin binary\n", { mode: 0o755 });
      const hostDir = (p: string) => join(tmp, "host", p);
      const cm = one("ConfigMap", "weft-cni-config");
      const dirs = new Map<string, string>();
      for (const m of init.volumeMounts as Json[]) {
        const { volume } = volumeFor(agentDs(), init, m.mountPath);
        let d: string;
        if (volume.hostPath) d = hostDir(volume.hostPath.path);
        else if (volume.configMap) {
          d = join(tmp, "cm", volume.configMap.name);
          mkdirSync(d, { recursive: true });
          for (const [k, v] of Object.entries(one("ConfigMap", volume.configMap.name).data as Record<string, string>)) writeFileSync(join(d, k), v);
        } else throw new Error(`unexpected volume ${volume.name}`);
        mkdirSync(d, { recursive: true });
        dirs.set(m.mountPath, d);
      }
      const mapPath = (p: string) => {
        const mp = [...dirs.keys()].filter((k) => p === k || p.startsWith(`${k}/`)).sort((a, b) => b.length - a.length)[0];
        return mp ? dirs.get(mp)! + p.slice(mp.length) : p === "/flannel" ? join(image, "flannel") : p;
      };
      expect(init.command.slice(0, 2)).toEqual(["sh", "-c"]);
      const script = (init.command[2] as string).replace(/\/[\w./-]+/g, (p) => mapPath(p));
      const r = spawnSync("sh", ["-c", script], { encoding: "utf8" });
      expect(r.status, r.stderr).toBe(0);
      const plugin = join(hostDir("/opt/cni/bin"), "flannel");
      expect(readFileSync(plugin, "utf8")).toContain("stands in for the plugin");
      expect(statSync(plugin).mode & 0o111, "the plugin is executable").not.toBe(0);
      const conflist = readFileSync(join(hostDir("/etc/cni/net.d"), "10-weft.conflist"), "utf8");
      expect(conflist).toBe(cm.data["10-weft.conflist"]);
      // Only the final names: a runtime must never see a temporary file as a config.
      expect(readdirNames(hostDir("/etc/cni/net.d"))).toEqual(["10-weft.conflist"]);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  it("the conflist is JSON naming the flannel plugin, reading the subnet.env the agent writes on the host", () => {
    const conf = JSON.parse(one("ConfigMap", "weft-cni-config").data["10-weft.conflist"]) as Json;
    expect(conf.cniVersion).toMatch(/^\d+\.\d+\.\d+$/);
    expect(conf.plugins[0].type).toBe("flannel");
    expect(conf.plugins[0].delegate).toMatchObject({ hairpinMode: true, isDefaultGateway: true });
    // The plugin runs on the host; the agent writes inside its container: the same file only through the hostPath.
    const subnetFile = flag(agent(), "subnet-file")!;
    const { mount, volume } = volumeFor(agentDs(), agent(), subnetFile);
    expect(volume.hostPath, "subnet.env is on a hostPath volume").toBeDefined();
    expect(volume.hostPath.path + subnetFile.slice(mount.mountPath.length)).toBe(conf.plugins[0].subnetFile ?? "/run/flannel/subnet.env");
  });

  it("the agent's state dir is on the host, so its certificate, VTEP MAC and keys outlive the pod", () => {
    const stateDir = flag(agent(), "state-dir")!;
    const { mount, volume } = volumeFor(agentDs(), agent(), stateDir);
    expect(mount.mountPath).toBe(stateDir);
    expect(volume.hostPath?.path).toBe("/var/lib/weft");
  });

  it("each agent gets its own identity from a join token in a Secret, checking the server with its CA", () => {
    const a = agent();
    const tokenFile = flag(a, "join-token-file")!;
    expect(volumeFor(agentDs(), a, tokenFile).volume.secret?.secretName).toBe("weft-join-token");
    expect(volumeFor(agentDs(), a, flag(a, "tls-ca")!).volume.configMap?.name).toBe("lease-server-ca");
    // One shared client certificate is what this replaces.
    expect(flag(a, "tls-cert")).toBeUndefined();
    expect(flag(a, "tls-key")).toBeUndefined();
    expect(flagsOf(a.args).map(([n]) => n)).not.toContain("insecure");
  });

  it("the agent reaches the lease server through the Service's variables, not DNS", () => {
    const server = flag(agent(), "server")!;
    const env = serviceEnv(service(), CLUSTER_IP);
    expect(expandVars(server, env)).toBe(`${CLUSTER_IP}:7600`);
    expect(server).not.toMatch(/svc|cluster\.local/);
    // Service variables (<NAME>_SERVICE_HOST...) must not look like WEFT_<FLAG> settings.
    for (const k of Object.keys(env)) expect(k.startsWith("WEFT_"), k).toBe(false);
  });

  it("the Service selects the lease server's pods (either variant) and names their ports", () => {
    const svc = service() as Json;
    for (const w of [serverSts(), serverHa()]) {
      for (const [k, v] of Object.entries(svc.spec.selector as Record<string, string>)) expect(w.spec.template.metadata.labels[k]).toBe(v);
      const names = container(w, "lease-server").ports.map((p: Json) => p.name);
      for (const p of svc.spec.ports) expect(names).toContain(p.targetPort);
    }
    const grpc = svc.spec.ports.find((p: Json) => p.name === "grpc");
    expect(flag(servers()[0]!, "listen")).toBe(`0.0.0.0:${grpc.port}`);
  });

  it("every serving container has startup, liveness and readiness probes on the health endpoints of a port it declares", () => {
    for (const w of workloads()) {
      for (const c of podSpec(w).containers as Json[]) {
        expect(c.ports?.length, `${c.name} serves`).toBeGreaterThan(0);
        for (const [probe, path] of [["livenessProbe", "/healthz"], ["readinessProbe", "/readyz"], ["startupProbe", "/healthz"]] as const) {
          const p = c[probe]?.httpGet;
          expect(p, `${w.metadata.name}/${c.name} ${probe}`).toBeDefined();
          expect(p.path).toBe(path);
          // With hostNetwork the kubelet probes the node's address: a host field pointing at loopback is not needed.
          expect(p.host).toBeUndefined();
          expect(c.ports.some((q: Json) => q.name === p.port || q.containerPort === p.port), `${c.name} ${probe} port ${p.port}`).toBe(true);
        }
      }
    }
  });

  it("agents are scraped on the metrics listener: annotations, port and --metrics-listen agree", () => {
    const ds = agentDs();
    const ann = ds.spec.template.metadata.annotations;
    expect(ann["prometheus.io/scrape"]).toBe("true");
    expect(ann["prometheus.io/path"]).toBe("/metrics");
    const port = Number(ann["prometheus.io/port"]);
    expect(agent().ports.map((p: Json) => p.containerPort)).toContain(port);
    expect(flag(agent(), "metrics-listen")).toBe(`0.0.0.0:${port}`);
    // The REST API can change state (key rotation): it stays on loopback.
    expect(flag(agent(), "http-listen")).toMatch(/^127\./);
    for (const w of [serverSts(), serverHa()]) {
      const a = w.spec.template.metadata.annotations;
      expect(flag(container(w, "lease-server"), "http-listen")).toBe(`0.0.0.0:${a["prometheus.io/port"]}`);
      expect(a["prometheus.io/scheme"]).toBe("https");
    }
  });

  it("every image is pinned to a version", () => {
    for (const w of workloads()) {
      for (const c of [...podSpec(w).containers, ...(podSpec(w).initContainers ?? [])] as Json[]) {
        expect(c.image, `${w.metadata.name}/${c.name}`).toMatch(/^[\w.-]+(\/[\w.-]+)+(:[\w.-]+|@sha256:[0-9a-f]{64})$/);
        expect(c.image, `${w.metadata.name}/${c.name}`).not.toMatch(/:latest$/);
      }
    }
  });

  it("every flag in args and every WEFT_ variable is a flag of the binary the container runs", () => {
    const specs: Record<string, Record<string, unknown>> = { "weft-agent": AGENT_FLAGS, "weft-lease-server": SERVER_FLAGS };
    let checked = 0;
    for (const w of workloads()) {
      for (const c of podSpec(w).containers as Json[]) {
        const bin = (c.command[0] as string).split("/").pop()!;
        const spec = specs[bin];
        expect(spec, `${c.name} runs ${bin}`).toBeDefined();
        for (const [name] of flagsOf(c.args)) {
          expect(Object.hasOwn(spec!, name), `${w.metadata.name}: --${name} is not a ${bin} flag`).toBe(true);
          checked++;
        }
        for (const e of (c.env ?? []) as Json[]) {
          if (!e.name.startsWith("WEFT_")) continue;
          expect(Object.keys(spec!).map(envName), `${w.metadata.name}: ${e.name}`).toContain(e.name);
        }
      }
    }
    expect(checked).toBeGreaterThan(30);
  });

  it("net-conf.json parses as the lease server parses it, the same in both variants", () => {
    const texts = byKind("ConfigMap", "lease-server-net-conf").map((cm) => cm.data["net-conf.json"] as string);
    expect(texts).toHaveLength(2);
    const [a, b] = texts.map((t) => parseNetworkConfig(t));
    expect(a).toEqual(b);
    expect(a!.network).toBeDefined();
  });

  it("neither daemon talks to the Kubernetes API: no RBAC, no service account tokens", () => {
    expect(all.filter((o) => o.apiVersion.startsWith("rbac.authorization.k8s.io/"))).toEqual([]);
    for (const sa of byKind("ServiceAccount")) expect(sa.automountServiceAccountToken, sa.metadata.name).toBe(false);
    for (const w of workloads()) {
      expect(podSpec(w).automountServiceAccountToken).toBe(false);
      expect(byKind("ServiceAccount", podSpec(w).serviceAccountName)).not.toHaveLength(0);
    }
  });

  it("Secrets are mounted without permissions for others", () => {
    for (const w of workloads()) {
      for (const v of (podSpec(w).volumes ?? []) as Json[]) {
        if (!v.secret) continue;
        // YAML 1.1, as Kubernetes reads it: 0440 is octal.
        expect(v.secret.defaultMode & 0o007, `${w.metadata.name} volume ${v.name}`).toBe(0);
      }
    }
  });

  it("SQLite: one replica whose claim binds to the static volume; HA: replicas on separate nodes", () => {
    const sts = serverSts();
    expect(sts.spec.replicas).toBe(1);
    expect(flag(container(sts, "lease-server"), "store")).toMatch(/^sqlite:\/var\/lib\/weft\//);
    const pv = one("PersistentVolume", "weft-lease-server-data");
    const claim = sts.spec.volumeClaimTemplates[0];
    expect(pv.spec.claimRef).toEqual({ namespace: NS, name: `${claim.metadata.name}-${sts.metadata.name}-0` });
    expect(pv.spec.storageClassName).toBe(claim.spec.storageClassName);
    expect(pv.spec.nodeAffinity.required.nodeSelectorTerms).toHaveLength(1);
    const ha = serverHa();
    expect(ha.spec.replicas).toBeGreaterThan(1);
    expect(flag(container(ha, "lease-server"), "store")).toMatch(/^etcd:https:\/\//);
    const anti = podSpec(ha).affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0];
    expect(anti.topologyKey).toBe("kubernetes.io/hostname");
    expect(anti.labelSelector.matchLabels).toEqual(ha.spec.selector.matchLabels);
    expect(ha.spec.strategy.rollingUpdate.maxSurge).toBe(0);
  });
});

