// The manifests under deploy/kubernetes, loaded once, and the lookups the
// Kubernetes tests share: objects by kind and name, containers, flags, and the
// volume behind a path.
import { dirname, join } from "node:path";
import { StrictFields, loadManifests, type K8sObject } from "./k8s-schema.js";

export const ROOT = join(dirname(new URL(import.meta.url).pathname), "../..");
export const DIR = join(ROOT, "deploy/kubernetes");
export const CLUSTER_IP = "10.96.0.50";
export const NS = "weft";

// Manifests are free-form YAML: kubernetes.test.ts checks their shape against the API types; the rest reads them loosely.
export type Json = Record<string, any>;

export const docs = loadManifests(DIR);
let strictFields: StrictFields | undefined;
/** Built once: it compiles the models' declarations (about a second). */
export const strict = () => (strictFields ??= new StrictFields(ROOT, docs.map((d) => d.obj)));
export const all = docs.map((d) => d.obj);
export const byKind = (kind: string, name?: string, file?: string) =>
  docs.filter((d) => d.obj.kind === kind && (name === undefined || d.obj.metadata.name === name) && (file === undefined || d.file === file)).map((d) => d.obj as Json);
export const one = (kind: string, name: string, file?: string): Json => {
  const found = byKind(kind, name, file);
  if (found.length !== 1) throw new Error(`expected one ${kind} ${name}${file ? ` in ${file}` : ""}, found ${found.length}`);
  return found[0]!;
};

export const agentDs = () => one("DaemonSet", "weft-agent");
export const serverSts = () => one("StatefulSet", "lease-server");
export const serverHa = () => one("Deployment", "lease-server");
export const service = () => one("Service", "lease-server") as K8sObject;
export const workloads = () => [agentDs(), serverSts(), serverHa()];
export const podSpec = (w: Json): Json => w.spec.template.spec;
export const container = (w: Json, name: string): Json => podSpec(w).containers.find((c: Json) => c.name === name);
export const agent = () => container(agentDs(), "weft-agent");
export const servers = () => [serverSts(), serverHa()].map((w) => container(w, "lease-server"));

/** "--name=value" / "--name" -> [name, value]. */
export function flagsOf(args: readonly string[]): [string, string | undefined][] {
  return args.map((a) => {
    const m = /^--([^=]+)(?:=(.*))?$/.exec(a);
    if (!m) throw new Error(`argument ${JSON.stringify(a)} is not --flag or --flag=value (the manifests write each flag as one item)`);
    return [m[1]!, m[2]];
  });
}
export const flag = (c: Json, name: string) => flagsOf(c.args).find(([n]) => n === name)?.[1];

/** The volume behind the mount that holds `path` in container `c` of workload `w` (longest mountPath wins). */
export function volumeFor(w: Json, c: Json, path: string): { mount: Json; volume: Json } {
  const mounts = (c.volumeMounts as Json[]).filter((m) => path === m.mountPath || path.startsWith(`${m.mountPath}/`)).sort((a, b) => b.mountPath.length - a.mountPath.length);
  if (mounts.length === 0) throw new Error(`${c.name}: nothing is mounted at ${path}`);
  const volume = [...(podSpec(w).volumes ?? []), ...(w.spec.volumeClaimTemplates ?? []).map((t: Json) => ({ name: t.metadata.name, persistentVolumeClaim: { claimName: t.metadata.name } }))]
    .find((v: Json) => v.name === mounts[0]!.name);
  if (!volume) throw new Error(`${c.name}: mount ${mounts[0]!.name} has no volume`);
  return { mount: mounts[0]!, volume };
}
