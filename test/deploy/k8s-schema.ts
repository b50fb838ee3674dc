// Offline checks of Kubernetes manifests against the API types kubernetes-models
// ships. Its validate() checks types and required fields but, like the OpenAPI
// schema it is made from, accepts any unknown field, so a typo such as
// `tolerration` would pass and the API server would drop it silently (or, with
// strict field validation, refuse the manifest). Unknown fields are found here
// by walking each object against the same model's TypeScript declarations.
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import ts from "typescript";
import { parseAllDocuments } from "yaml";

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [key: string]: unknown;
}

export interface ManifestDoc {
  readonly file: string;
  readonly obj: K8sObject;
}

/** Every document of every *.yaml in `dir` except kustomization.yaml; YAML errors fail loudly with the file. */
export function loadManifests(dir: string): ManifestDoc[] {
  const out: ManifestDoc[] = [];
  for (const file of readdirSync(dir).filter((f) => f.endsWith(".yaml") && f !== "kustomization.yaml").sort()) {
    for (const doc of parseAllDocuments(readFileSync(join(dir, file), "utf8"), { version: "1.1" })) {
      if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors.map((e) => e.message).join("; ")}`);
      const obj = doc.toJS() as K8sObject | null;
      if (obj) out.push({ file, obj });
    }
  }
  return out;
}

/** "apps/v1" + "DaemonSet" -> "kubernetes-models/apps/v1/DaemonSet"; the core group is "v1". */
export function modelModule(apiVersion: string, kind: string): string {
  return `kubernetes-models/${apiVersion}/${kind}`;
}

/** kubernetes-models' validate(): throws naming each path that has the wrong type or lacks a required field. */
export async function validateWithModel(obj: K8sObject): Promise<void> {
  const mod = (await import(modelModule(obj.apiVersion, obj.kind))) as Record<string, new (data: unknown) => { validate(): void }>;
  const Model = mod[obj.kind];
  if (!Model) throw new Error(`kubernetes-models has no ${obj.apiVersion} ${obj.kind}`);
  new Model(obj).validate();
}

/**
 * Builds one TypeScript program over the models' declarations of the given kinds, then reports the
 * paths of fields their interfaces do not declare. Maps (labels, ConfigMap data) are index
 * signatures and accept any key.
 */
export class StrictFields {
  private readonly checker: ts.TypeChecker;
  private readonly types = new Map<string, ts.Type>();

  constructor(root: string, kinds: readonly { apiVersion: string; kind: string }[]) {
    const unique = [...new Map(kinds.map((k) => [`${k.apiVersion}/${k.kind}`, k])).values()];
    const virtual = join(root, "test/deploy/__k8s_types__.ts");
    const source = unique.map((k, i) => `import type { I${k.kind} as T${i} } from "${modelModule(k.apiVersion, k.kind)}";\nexport type K${i} = T${i};`).join("\n");
    const options: ts.CompilerOptions = { module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, target: ts.ScriptTarget.ES2022, strict: true, noEmit: true, skipLibCheck: true, types: [] };
    const host = ts.createCompilerHost(options);
    const readFile = host.readFile.bind(host);
    const getSourceFile = host.getSourceFile.bind(host);
    host.readFile = (f) => (f === virtual ? source : readFile(f));
    host.fileExists = ((exists) => (f: string) => f === virtual || exists(f))(host.fileExists.bind(host));
    host.getSourceFile = (f, lang, onError, create) => (f === virtual ? ts.createSourceFile(f, source, lang) : getSourceFile(f, lang, onError, create));
    const program = ts.createProgram([virtual], options, host);
    const diags = ts.getPreEmitDiagnostics(program).filter((d) => d.file?.fileName === virtual);
    if (diags.length > 0) throw new Error(`kubernetes-models types: ${diags.map((d) => ts.flattenDiagnosticMessageText(d.messageText, " ")).join("; ")}`);
    this.checker = program.getTypeChecker();
    const sf = program.getSourceFile(virtual)!;
    const aliases = sf.statements.filter(ts.isTypeAliasDeclaration);
    unique.forEach((k, i) => this.types.set(`${k.apiVersion}/${k.kind}`, this.checker.getTypeAtLocation(aliases[i]!.name)));
  }

  /** Paths like `spec.template.spec.tolerration` that the kind does not declare. */
  unknownFields(obj: K8sObject): string[] {
    const type = this.types.get(`${obj.apiVersion}/${obj.kind}`);
    if (!type) throw new Error(`StrictFields was not built for ${obj.apiVersion} ${obj.kind}`);
    const out: string[] = [];
    this.walk(obj, type, "", out);
    return out;
  }

  private walk(value: unknown, type: ts.Type, path: string, out: string[]): void {
    if (value === null || typeof value !== "object") return;
    const t = this.checker.getNonNullableType(type);
    if (t.flags & (ts.TypeFlags.Any | ts.TypeFlags.Unknown)) return;
    if (Array.isArray(value)) {
      const el = t.getNumberIndexType();
      if (el) value.forEach((v, i) => this.walk(v, el, `${path}[${i}]`, out));
      return;
    }
    const objects = (t.isUnion() ? t.types : [t]).filter((m) => m.flags & ts.TypeFlags.Object);
    if (objects.length === 0) return;
    for (const [key, v] of Object.entries(value)) {
      const at = path ? `${path}.${key}` : key;
      const prop = objects.map((o) => o.getProperty(key)).find((p) => p !== undefined);
      if (prop) {
        this.walk(v, this.checker.getTypeOfSymbol(prop), at, out);
        continue;
      }
      const index = objects.map((o) => o.getStringIndexType()).find((x) => x !== undefined);
      if (index) this.walk(v, index, at, out);
      else out.push(at);
    }
  }
}

/** Kubernetes' $(VAR) expansion in command, args and env values: $$ escapes, unknown references stay as written. */
export function expandVars(s: string, env: Readonly<Record<string, string>>): string {
  return s.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, name: string | undefined) => (name === undefined ? "$" : env[name] ?? m));
}

/** The variables the kubelet gives pods for a Service (docker-links style, as pkg/kubelet/envvars makes them). */
export function serviceEnv(service: K8sObject, clusterIP: string): Record<string, string> {
  const prefix = service.metadata.name.toUpperCase().replace(/-/g, "_");
  const ports = (service.spec as { ports: { name?: string; port: number; protocol?: string }[] }).ports;
  const env: Record<string, string> = { [`${prefix}_SERVICE_HOST`]: clusterIP, [`${prefix}_SERVICE_PORT`]: String(ports[0]!.port) };
  for (const p of ports) {
    if (p.name) env[`${prefix}_SERVICE_PORT_${p.name.toUpperCase().replace(/-/g, "_")}`] = String(p.port);
    const proto = (p.protocol ?? "TCP").toUpperCase();
    env[`${prefix}_PORT_${p.port}_${proto}`] = `${proto.toLowerCase()}://${clusterIP}:${p.port}`;
  }
  env[`${prefix}_PORT`] = `${(ports[0]!.protocol ?? "TCP").toLowerCase()}://${clusterIP}:${ports[0]!.port}`;
  return env;
}
