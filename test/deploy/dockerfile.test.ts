// The image cannot be built here (no Docker daemon on these machines), so the
// Dockerfile is held to its invariants by reading it: build tools only in the
// build stage, a non-root runtime user, the runtime stage holding exactly what
// the daemons import (and their imports only production dependencies), every
// path it copies present and not dropped by .dockerignore, and no secrets.
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { requireOrSkip } from "../tools.js";
import { copies, dockerIgnore, parseDockerfile } from "./dockerfile-parse.js";

const ROOT = resolve(import.meta.dirname, "../..");
const read = (p: string) => readFileSync(join(ROOT, p), "utf8");
const stages = parseDockerfile(read("Dockerfile"));
const final = stages.at(-1)!;
const builders = stages.slice(0, -1);
const ignored = dockerIgnore(read(".dockerignore"));
const BUILD_TOOLS = /\b(python3|make|g\+\+|gcc|build-essential|node-gyp)\b/;
const pkg = JSON.parse(read("package.json")) as { dependencies: Record<string, string> };

/** Relative and bare imports of a TypeScript file (type-only imports are erased: skipped). */
function importsOf(file: string): { relative: string[]; bare: string[] } {
  const text = readFileSync(file, "utf8");
  const specs = [...text.matchAll(/^\s*(?:import|export)\s+(?!type\s)(?:[^"';]*?\sfrom\s+)?["']([^"']+)["']/gm), ...text.matchAll(/\bimport\(\s*["']([^"']+)["']\s*\)/g)].map((m) => m[1]!);
  return { relative: specs.filter((s) => s.startsWith(".")), bare: specs.filter((s) => !s.startsWith(".") && !s.startsWith("node:")) };
}

/** Every source file the daemons load, from their entry points. */
function runtimeClosure(): { files: string[]; packages: Set<string> } {
  const seen = new Set<string>();
  const packages = new Set<string>();
  const todo = ["lease-server/src/main.ts", "node-agent/src/main.ts"].map((p) => join(ROOT, p));
  while (todo.length > 0) {
    const file = todo.pop()!;
    if (seen.has(file)) continue;
    seen.add(file);
    const { relative: rel, bare } = importsOf(file);
    for (const b of bare) packages.add(b.startsWith("@") ? b.split("/").slice(0, 2).join("/") : b.split("/")[0]!);
    for (const r of rel) {
      const target = resolve(dirname(file), r).replace(/\.js$/, ".ts");
      todo.push(existsSync(target) ? target : join(target, "index.ts"));
    }
  }
  return { files: [...seen].map((f) => relative(ROOT, f)), packages };
}

function walk(dir: string): string[] {
  return readdirSync(join(ROOT, dir), { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => relative(ROOT, join(e.parentPath, e.name)));
}

describe("Dockerfile", () => {
  it("has a build stage and a runtime stage on one Node image", () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    expect(builders.map((s) => s.name)).toContain("build");
    expect(new Set(stages.map((s) => s.from)).size).toBe(1);
  });

  it("installs build tools only in the build stage", () => {
    const runs = (s: (typeof stages)[number]) => s.instructions.filter((i) => i.op === "RUN").map((i) => i.args);
    expect(builders.flatMap(runs).some((r) => BUILD_TOOLS.test(r))).toBe(true);
    expect(runs(final).filter((r) => BUILD_TOOLS.test(r))).toEqual([]);
    expect(runs(final).some((r) => /\bnpm (ci|install)\b/.test(r))).toBe(false);
  });

  it("runs as a fixed non-root uid, with the state dir its own", () => {
    const user = final.instructions.filter((i) => i.op === "USER").at(-1)?.args;
    expect(user).toMatch(/^\d+(:\d+)?$/);
    const uid = Number(user!.split(":")[0]);
    expect(uid).toBeGreaterThan(0);
    expect(final.instructions.some((i) => i.op === "RUN" && new RegExp(`-o ${uid}\\b.*\\/var\\/lib\\/weft`).test(i.args))).toBe(true);
  });

  it("starts the lease server from bin/, and the runtime stage has what both daemons load", () => {
    const entry = final.instructions.find((i) => i.op === "ENTRYPOINT");
    const workdir = final.instructions.filter((i) => i.op === "WORKDIR").at(-1)!.args;
    expect(JSON.parse(entry!.args)).toEqual([`${workdir}/bin/weft-lease-server`]);
    expect(statSync(join(ROOT, "bin/weft-lease-server")).mode & 0o111).not.toBe(0);
    const fromBuild = copies(final).filter((c) => c.from === "build").flatMap((c) => c.sources.map((s) => relative(workdir, s)));
    const inRuntime = [...fromBuild, ...copies(final).filter((c) => c.from === undefined).flatMap((c) => c.sources)];
    // Every top directory the daemons import from is compiled into dist/<dir>; bin/ and package.json ("type": "module") too.
    const tops = new Set(runtimeClosure().files.map((f) => f.split("/")[0]!));
    for (const top of tops) expect(fromBuild, `dist/${top}`).toContain(`dist/${top}`);
    for (const p of ["node_modules", "package.json"]) expect(fromBuild).toContain(p);
    expect(inRuntime).toContain("bin");
  });

  it("takes from the build stage only what that stage copied in or npm ci made there", () => {
    const build = stages.find((s) => s.name === "build")!;
    const workdir = build.instructions.filter((i) => i.op === "WORKDIR").at(-1)!.args;
    const made = new Set(["dist", "node_modules", "gen"]);
    for (const c of copies(build)) for (const src of c.sources) made.add(c.dest === "./" ? src.split("/").pop()! : c.dest.split("/")[0]!);
    for (const c of copies(final).filter((c) => c.from === "build")) {
      for (const src of c.sources) expect([...made], `${src}: the build stage has no such path`).toContain(relative(workdir, src).split("/")[0]);
    }
  });

  it("the daemons import only production dependencies (the build stage prunes the rest)", () => {
    const { packages } = runtimeClosure();
    expect(packages.size).toBeGreaterThan(5);
    for (const p of packages) expect(Object.keys(pkg.dependencies), `${p} is imported at run time`).toContain(p);
    expect(builders.flatMap((s) => s.instructions).some((i) => i.op === "RUN" && /npm prune --omit=dev/.test(i.args))).toBe(true);
  });

  it("copies only paths that exist and that .dockerignore keeps, and everything the build compiles imports", () => {
    const fromContext = stages.flatMap(copies).filter((c) => c.from === undefined).flatMap((c) => c.sources);
    for (const src of fromContext) {
      expect(existsSync(join(ROOT, src)), `${src} exists`).toBe(true);
      expect(ignored(src), `${src} is dropped by .dockerignore`).toBe(false);
    }
    const copied = new Set(fromContext.map((s) => s.split("/")[0]!));
    const dirs = fromContext.filter((s) => statSync(join(ROOT, s)).isDirectory());
    for (const file of dirs.flatMap(walk).filter((f) => f.endsWith(".ts") && !ignored(f))) {
      for (const r of importsOf(join(ROOT, file)).relative) {
        const top = relative(ROOT, resolve(ROOT, dirname(file), r)).split("/")[0]!;
        if (top !== "gen" && top !== "node_modules") expect(copied, `${file} imports ${r}`).toContain(top);
      }
    }
  });

  it(".dockerignore keeps host builds and secrets out", () => {
    for (const p of ["node_modules", "dist", "gen", ".git", "leases.db", "x/leases.db-wal", "deploy/admin-token", ".vitest-results.json", "tmp"]) expect(ignored(p), p).toBe(true);
    for (const p of ["lib/src/flags.ts", "package.json", "bin/weft-agent"]) expect(ignored(p), p).toBe(false);
  });

  it("bakes in no secret", () => {
    const all = stages.flatMap((s) => s.instructions);
    expect(all.filter((i) => (i.op === "ENV" || i.op === "ARG") && /(TOKEN|PASSWORD|SECRET|_KEY\b)/i.test(i.args))).toEqual([]);
    const sources = stages.flatMap(copies).flatMap((c) => c.sources);
    expect(sources.filter((s) => /(\.key|\.pem|token|secret|\.env)$/i.test(s))).toEqual([]);
  });
});

// The runtime stage's files, laid out from this checkout's build (dist/ from `npm run build`), must be
// enough to start both daemons: a module the stage leaves out fails the import.
const haveDist = requireOrSkip(existsSync(join(ROOT, "dist/lease-server/src/main.js")) ? [] : ["dist/ (npm run build)"], "the image layout test");

describe.runIf(haveDist)("the runtime stage's files", () => {
  it("start both daemons (--help loads every module they import)", () => {
    const image = mkdtempSync(join(tmpdir(), "weft-image-"));
    try {
      const workdir = final.instructions.filter((i) => i.op === "WORKDIR").at(-1)!.args;
      for (const c of copies(final)) {
        for (const src of c.sources) {
          const from = c.from === "build" ? join(ROOT, relative(workdir, src)) : join(ROOT, src);
          const to = join(image, c.dest === "./" ? src.split("/").pop()! : c.dest);
          // node_modules is the checkout's (with dev dependencies); the test above holds imports to production ones.
          if (src.endsWith("node_modules")) symlinkSync(from, to);
          else cpSync(from, to, { recursive: true });
        }
      }
      for (const bin of ["weft-lease-server", "weft-agent"]) {
        const out = execFileSync(process.execPath, [join(image, "bin", bin), "--help"], { encoding: "utf8", env: { PATH: process.env.PATH } });
        expect(out).toMatch(new RegExp(`^Usage: ${bin}`));
      }
    } finally {
      rmSync(image, { recursive: true, force: true });
    }
  });
});
