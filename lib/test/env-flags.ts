// Shared checks that every flag of a daemon can come from its WEFT_* variable:
// scenarios give a value for each flag (booleans: true or false), and the
// flag list is read from the daemon's FLAGS, so a new flag fails the check
// until a scenario sets it.
import { expect } from "vitest";
import { envName, type FlagSpec } from "../src/flags.js";

/** Flag name -> value ("true"/"false" for booleans). */
export type Scenario = Readonly<Record<string, string>>;
type Load = (argv: readonly string[], env: Record<string, string>) => unknown;

export const envOf = (s: Scenario): Record<string, string> => Object.fromEntries(Object.entries(s).map(([k, v]) => [envName(k), v]));

export function argvOf(s: Scenario, spec: Record<string, FlagSpec>): string[] {
  return Object.entries(s).flatMap(([k, v]) => (spec[k]!.type === "boolean" ? [`--${k}=${v}`] : [`--${k}`, v]));
}

/** The config, or the error message: both are compared. */
export function outcome(f: () => unknown): unknown {
  try {
    return f();
  } catch (err) {
    return { error: (err as Error).message };
  }
}

/** The scenarios set every flag but --help, and only flags. */
export function expectCoverage(spec: Record<string, FlagSpec>, scenarios: Record<string, Scenario>): void {
  const set = new Set(Object.values(scenarios).flatMap((s) => Object.keys(s)));
  expect([...set].filter((k) => !Object.hasOwn(spec, k)), "scenario names a flag that does not exist").toEqual([]);
  expect(Object.keys(spec).filter((k) => k !== "help" && !set.has(k)), "flags no scenario sets from the environment").toEqual([]);
}

/**
 * The environment alone gives the same config as the same values on the command line, and
 * each variable counts: without it the config differs (or loading fails). `sameAs` turns the config
 * from argv into the one expected from the environment, where the config records how a flag was set.
 */
export function expectEnvEqualsArgv(spec: Record<string, FlagSpec>, scenario: Scenario, load: Load, sameAs: (fromArgv: unknown) => unknown = (c) => c): void {
  const fromEnv = outcome(() => load([], envOf(scenario)));
  expect(fromEnv, "the scenario loads").not.toHaveProperty("error");
  expect(fromEnv).toEqual(sameAs(outcome(() => load(argvOf(scenario, spec), {}))));
  for (const flag of Object.keys(scenario)) {
    const { [flag]: _, ...rest } = scenario;
    expect(outcome(() => load([], envOf(rest))), `${envName(flag)} makes a difference`).not.toEqual(fromEnv);
  }
}
