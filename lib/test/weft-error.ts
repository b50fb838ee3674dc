import { expect } from "vitest";
import { isWeftError, type ErrorCode } from "../src/errors.js";

/** Runs fn, expects a WeftError with `code`, and returns its message. */
export function weftErrorMessage(fn: () => unknown, code: ErrorCode): string {
  try {
    fn();
  } catch (err) {
    expect(isWeftError(err, code)).toBe(true);
    return (err as Error).message;
  }
  throw new Error(`expected a ${code} error`);
}
