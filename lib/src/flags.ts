// Command-line flags for both daemons. Every flag is "--name value" or
// "--name=value"; booleans take no value. Errors name the flag and the fix,
// and main() prints them without a stack trace.
//
// Every flag can also come from the environment as WEFT_<FLAG> (Flannel's
// FLANNELD_* convention), for containers and systemd units; the command line
// wins. Each value remembers where it came from, so an error about it names
// what the operator actually wrote: --lease-ttl or WEFT_LEASE_TTL.
import { WeftError, isWeftError } from "./errors.js";

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

export type Env = Readonly<Record<string, string | undefined>>;

export const ENV_PREFIX = "WEFT_";

/** "lease-ttl" -> "WEFT_LEASE_TTL". */
export function envName(flag: string): string {
  return ENV_PREFIX + flag.toUpperCase().replace(/-/g, "_");
}

/** The environment makes no sense for these: WEFT_HELP would turn a daemon into a help printer. */
const NOT_FROM_ENV = new Set(["help"]);

/** WEFT_ variables of the scripts, benchmarks, tests and deploy/compose/init.mjs: not flags, and not typos of one. */
const OTHER_WEFT_VARS = /^WEFT_(DEMO_|IPERF_|BENCH_|DRIFT_|FUZZ_|KEEP_LOGS$|E2E$|SERVER_NAMES$|SERVER_URL$|AGENT_URL$|ADMIN_TOKEN$)/;

const ENV_BOOLEANS: Readonly<Record<string, boolean>> = { true: true, "1": true, yes: true, false: false, "0": false, no: false };

export interface ParsedFlags<S extends Record<string, FlagSpec>> {
  readonly values: FlagValues<S>;
  /** Flags set on the command line or in the environment (the rest have their defaults). */
  readonly given: ReadonlySet<keyof S & string>;
  /** How the operator set a flag: "--lease-ttl", or "WEFT_LEASE_TTL" when its value came from the environment. */
  nameOf(flag: keyof S & string): string;
  /**
   * Runs the config checks behind parsing; a usage error they throw names each flag the way it was
   * set ("WEFT_LEASE_TTL: "5x" is not a duration"), so the messages themselves can keep saying --flag.
   */
  explain<T>(check: () => T): T;
}

/** Compat: the values only, from the command line alone unless an environment is given. */
export function parseFlags<S extends Record<string, FlagSpec>>(argv: readonly string[], spec: S, bin: string, env: Env = {}): FlagValues<S> {
  return readFlags(argv, spec, bin, env).values;
}

/**
 * Defaults, then WEFT_* variables, then argv. `env` is passed in (main() gives process.env), so tests
 * and callers that pass none get the command line alone. `warn` hears about WEFT_* variables that are
 * no flag of this daemon: ignored, as Flannel does, but a typo like WEFT_NODENAME should not pass silently.
 */
export function readFlags<S extends Record<string, FlagSpec>>(argv: readonly string[], spec: S, bin: string, env: Env = {}, warn?: (message: string) => void): ParsedFlags<S> {
  const out: Record<string, string | boolean | undefined> = {};
  const fromEnv = new Set<string>();
  const given = new Set<string>();
  for (const [name, s] of Object.entries(spec)) out[name] = s.type === "boolean" ? s.default === "true" : s.default;
  const byEnvName = new Map(Object.keys(spec).filter((n) => !NOT_FROM_ENV.has(n)).map((n) => [envName(n), n]));
  for (const [key, raw] of Object.entries(env)) {
    if (!key.startsWith(ENV_PREFIX)) continue;
    const name = byEnvName.get(key);
    if (name === undefined) {
      if (!OTHER_WEFT_VARS.test(key)) warn?.(unknownVarWarning(key, [...byEnvName.keys()], bin));
      continue;
    }
    // Empty counts as unset (as for Flannel): templates often render an absent value as "".
    if (raw === undefined || raw === "") continue;
    if (spec[name]!.type === "boolean") {
      const b = ENV_BOOLEANS[raw.trim().toLowerCase()];
      if (b === undefined) throw usageError(`${key}: ${JSON.stringify(raw)} is not a boolean; use true or false`);
      out[name] = b;
    } else out[name] = raw;
    fromEnv.add(name);
    given.add(name);
  }
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
      fromEnv.delete(name);
      given.add(name);
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
    fromEnv.delete(name);
    given.add(name);
  }
  const nameOf = (flag: string) => (fromEnv.has(flag) ? envName(flag) : `--${flag}`);
  return {
    values: out as FlagValues<S>,
    given: given as Set<keyof S & string>,
    nameOf,
    explain<T>(check: () => T): T {
      try {
        return check();
      } catch (err) {
        if (!isWeftError(err) || err.code !== "CONFIG_INVALID" || fromEnv.size === 0) throw err;
        let message = err.message;
        // Not inside a longer name: --tls-cert must leave --http-tls-cert alone.
        for (const flag of fromEnv) message = message.replace(new RegExp(`(?<![\\w-])--${flag}(?![\\w-])`, "g"), envName(flag));
        throw new WeftError("CONFIG_INVALID", message, { cause: err });
      }
    },
  };
}

function unknownVarWarning(key: string, known: readonly string[], bin: string): string {
  const best = known.map((k) => [k, editDistance(key, k)] as const).sort((a, b) => a[1] - b[1])[0];
  const hint = best && best[1] <= Math.max(2, Math.floor(key.length / 4)) ? `did you mean ${best[0]}? ` : "";
  return `warning: ${key} is not a ${bin} setting and is ignored (${hint}run ${bin} --help for the flags; WEFT_<FLAG> sets --<flag>)`;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}

export function formatHelp(bin: string, summary: string, spec: Record<string, FlagSpec>): string {
  const rows = Object.entries(spec).map(([name, s]) => {
    const left = `  --${name}${s.type === "string" ? ` ${s.value ?? "VALUE"}` : ""}`;
    const dflt = s.default !== undefined ? ` (default ${s.default})` : "";
    return `${left.padEnd(34)} ${s.help}${dflt}`;
  });
  // The example is a flag of this daemon, so it can be copied: WEFT_NODE_NAME for the agent.
  const example = Object.keys(spec).find((n) => n.includes("-") && spec[n]!.type === "string" && !NOT_FROM_ENV.has(n)) ?? Object.keys(spec)[0]!;
  const envNote = `Every flag can also be set as WEFT_<FLAG> (e.g. ${envName(example)} for --${example}); the command line wins.\n`
    + "Booleans there take true or false (also 1/0, yes/no); an empty variable counts as unset.\n";
  return `Usage: ${bin} [flags]\n\n${summary}\n\nFlags:\n${rows.join("\n")}\n\n${envNote}`;
}

/** "HOST:PORT" with a numeric port; returns [host, port]. */
export function parseHostPort(v: string, flag: string): [string, number] {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:\s]+):(\d{1,5})$/.exec(v);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) throw usageError(`--${flag}: ${JSON.stringify(v)} is not HOST:PORT; write it like 127.0.0.1:8080`);
  return [m[1]!.replace(/^\[|\]$/g, ""), port];
}
