// Shared settings of the property-based fuzz tests. Every property runs a
// fixed number of times from a fixed seed, so CI runs are repeatable and
// bounded in time; fast-check prints the seed and the shrunk counterexample
// of a failure, and FUZZ_SEED=<seed> replays it. FUZZ_SCALE=20 runs every
// property twenty times as often (a local soak, not CI). FUZZ_REPORT=1 prints
// how many inputs each surface tried, the figures docs/security.md quotes.
import { afterAll } from "vitest";
import fc from "fast-check";

export const FUZZ_SEED = Number(process.env.FUZZ_SEED ?? 20261129);
const SCALE = Math.max(1, Number(process.env.FUZZ_SCALE ?? 1) || 1);

/** fast-check parameters for a property that runs `runs` times in CI. */
export function fuzzParams<T>(runs: number): fc.Parameters<T> {
  return { seed: FUZZ_SEED, numRuns: Math.round(runs * SCALE) };
}

/** Per-test timeout: generous for a busy 2-core machine, and scaled with the runs. */
export const FUZZ_TIMEOUT_MS = 60_000 * SCALE;

/** Counts the inputs a surface tried; printed after the file with FUZZ_REPORT=1. */
export function inputCounter(surface: string): { add(n?: number): void } {
  let count = 0;
  afterAll(() => {
    if (process.env.FUZZ_REPORT) console.log(`fuzz ${surface}: ${count} inputs (seed ${FUZZ_SEED}, scale ${SCALE})`);
  });
  return { add: (n = 1) => void (count += n) };
}

/** Strings that parsers meet in the wild: unicode, control characters, long runs, near-misses of valid values. */
export function nastyString(valid: readonly string[] = []): fc.Arbitrary<string> {
  return fc.oneof(
    fc.string({ unit: "binary", maxLength: 40 }),
    fc.string({ unit: "grapheme", maxLength: 20 }),
    fc.constantFrom("", " ", "\0", "\n", "..", "../..", "%2e%2e", "__proto__", "constructor", "NaN", "-1", "1e309", "0x10", "\u202e", "🦄", "a".repeat(5000), ...valid),
    ...(valid.length ? [fc.constantFrom(...valid).chain((v) => mutate(v))] : []),
  );
}

/** A valid value with one character inserted, deleted or replaced, or cut short. */
export function mutate(v: string): fc.Arbitrary<string> {
  return fc.tuple(fc.nat({ max: Math.max(0, v.length) }), fc.constantFrom("ins", "del", "rep", "cut"), fc.string({ unit: "binary", minLength: 1, maxLength: 3 }))
    .map(([i, op, s]) => op === "ins" ? v.slice(0, i) + s + v.slice(i) : op === "del" ? v.slice(0, i) + v.slice(i + 1) : op === "rep" ? v.slice(0, i) + s + v.slice(i + 1) : v.slice(0, i));
}
