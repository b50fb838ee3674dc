// The parts of a compose file the deploy tests read.
export interface Service {
  readonly image?: string;
  readonly build?: string;
  readonly profiles?: string[];
  readonly entrypoint?: string[];
  readonly command?: string[];
  readonly environment?: Record<string, string>;
  readonly ports?: (string | number)[];
  readonly volumes?: string[];
  readonly depends_on?: Record<string, { condition: string }>;
  readonly healthcheck?: { test: string[] };
  readonly privileged?: boolean;
  readonly network_mode?: string;
  readonly cap_add?: string[];
}

export interface Compose {
  readonly services: Record<string, Service>;
  readonly volumes?: Record<string, unknown>;
}

/** A service's --name=value command-line flags (booleans map to ""). */
export function composeFlags(s: Service): Map<string, string> {
  const out = new Map<string, string>();
  for (const arg of s.command ?? []) {
    const m = /^--([a-z0-9-]+)(?:=(.*))?$/.exec(arg);
    if (!m) throw new Error(`${JSON.stringify(arg)}: write compose flags as --name=value, one per item`);
    out.set(m[1]!, m[2] ?? "");
  }
  return out;
}
