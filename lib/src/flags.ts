// Command-line flags for both daemons. Every flag is "--name value" or
// "--name=value"; booleans take no value. Errors name the flag and the fix,
// and main() prints them without a stack trace.
import { WeftError } from "./errors.js";

export interface FlagSpec {
  readonly type: "string" | "boolean";
  readonly help: string;
  /** For booleans, "true" makes the flag default on (turned off with --name=false). */
  readonly default?: string;
  /** Placeholder for the value in --help, e.g. "HOST:PORT". */
  readonly value?: string;
}

export type FlagValues<S extends Record<string, FlagSpec>> = {
  [K in keyof S]: S[K]["type"] extends "boolean" ? boolean : S[K]["default"] extends string ? string : string | undefined;
};

export function usageError(message: string): WeftError {
  return new WeftError("CONFIG_INVALID", message);
}

export function parseFlags<S extends Record<string, FlagSpec>>(argv: readonly string[], spec: S, bin: string): FlagValues<S> {
  const out: Record<string, string | boolean | undefined> = {};
  for (const [name, s] of Object.entries(spec)) out[name] = s.type === "boolean" ? s.default === "true" : s.default;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith("--")) throw usageError(`unexpected argument ${JSON.stringify(arg)}; flags look like --name value (run ${bin} --help)`);
    const eq = arg.indexOf("=");
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const s = Object.hasOwn(spec, name) ? spec[name] : undefined;
    if (!s) throw usageError(`unknown flag --${name}; run ${bin} --help for the list of flags`);
    if (s.type === "boolean") {
      if (eq >= 0) {
        const v = arg.slice(eq + 1);
        if (v !== "true" && v !== "false") throw usageError(`--${name} takes no value (or =true/=false), got ${JSON.stringify(v)}`);
        out[name] = v === "true";
      } else out[name] = true;
      continue;
    }
    let v: string | undefined;
    if (eq >= 0) v = arg.slice(eq + 1);
    else {
      v = argv[i + 1];
      if (v === undefined || v.startsWith("--")) throw usageError(`--${name} needs a value: --${name} ${s.value ?? "VALUE"}`);
      i++;
    }
    if (v === "") throw usageError(`--${name} is empty; give it a value: --${name} ${s.value ?? "VALUE"}`);
    out[name] = v;
  }
  return out as FlagValues<S>;
}

export function formatHelp(bin: string, summary: string, spec: Record<string, FlagSpec>): string {
  const rows = Object.entries(spec).map(([name, s]) => {
    const left = `  --${name}${s.type === "string" ? ` ${s.value ?? "VALUE"}` : ""}`;
    const dflt = s.default !== undefined ? ` (default ${s.default})` : "";
    return `${left.padEnd(34)} ${s.help}${dflt}`;
  });
  return `Usage: ${bin} [flags]\n\n${summary}\n\nFlags:\n${rows.join("\n")}\n`;
}

/** "HOST:PORT" with a numeric port; returns [host, port]. */
export function parseHostPort(v: string, flag: string): [string, number] {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:\s]+):(\d{1,5})$/.exec(v);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) throw usageError(`--${flag}: ${JSON.stringify(v)} is not HOST:PORT; write it like 127.0.0.1:8080`);
  return [m[1]!.replace(/^\[|\]$/g, ""), port];
}
