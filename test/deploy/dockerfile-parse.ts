// Just enough of the Dockerfile and .dockerignore syntax for the tests to check
// an image they cannot build here (no Docker daemon on the test machines).
export interface Instruction {
  readonly op: string;
  readonly args: string;
  readonly line: number;
}

export interface Stage {
  readonly from: string;
  readonly name: string | undefined;
  readonly instructions: Instruction[];
}

export function parseDockerfile(text: string): Stage[] {
  const stages: Stage[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const start = i;
    let line = lines[i]!.trim();
    if (line === "" || line.startsWith("#")) continue;
    while (line.endsWith("\\") && i + 1 < lines.length) {
      const next = lines[++i]!.trim();
      line = `${line.slice(0, -1).trimEnd()} ${next.startsWith("#") ? "" : next}`.trimEnd();
    }
    const m = /^([A-Za-z]+)\s+(.*)$/.exec(line);
    if (!m) throw new Error(`Dockerfile line ${start + 1}: no instruction: ${line}`);
    const ins = { op: m[1]!.toUpperCase(), args: m[2]!, line: start + 1 };
    if (ins.op === "FROM") {
      const f = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(ins.args)!;
      stages.push({ from: f[1]!, name: f[2], instructions: [] });
    } else if (stages.length > 0) stages.at(-1)!.instructions.push(ins);
  }
  return stages;
}

export interface Copy {
  readonly from: string | undefined;
  readonly sources: string[];
  readonly dest: string;
}

export function copies(stage: Stage): Copy[] {
  return stage.instructions.filter((i) => i.op === "COPY" || i.op === "ADD").map((i) => {
    const words = i.args.trim().startsWith("[") ? (JSON.parse(i.args) as string[]) : i.args.split(/\s+/);
    const from = words.find((w) => w.startsWith("--from="))?.slice("--from=".length);
    const paths = words.filter((w) => !w.startsWith("--"));
    return { from, sources: paths.slice(0, -1), dest: paths.at(-1)! };
  });
}

/** Docker's .dockerignore rules: `**` spans directories, `*` and `?` do not; `!` re-includes; an excluded directory excludes its contents. */
export function dockerIgnore(text: string): (path: string) => boolean {
  const rules = text.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#")).map((l) => {
    const negate = l.startsWith("!");
    const pattern = (negate ? l.slice(1) : l).replace(/^\/+|\/+$/g, "");
    const re = pattern.split(/(\*\*\/?|\*|\?)/).map((part) =>
      part.startsWith("**") ? "(?:.*/)?" : part === "*" ? "[^/]*" : part === "?" ? "[^/]" : part.replace(/[.+^${}()|[\]\\]/g, "\\$&")).join("");
    return { negate, re: new RegExp(`^${re}$`) };
  });
  return (path) => {
    const parts = path.replace(/^\.\/|\/$/g, "").split("/");
    let excluded = false;
    for (const { negate, re } of rules) {
      const hit = parts.some((_, n) => re.test(parts.slice(0, n + 1).join("/")));
      if (hit) excluded = !negate;
    }
    return excluded;
  };
}
