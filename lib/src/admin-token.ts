// Bearer tokens for the daemons' state-changing REST routes (--admin-token-file).
// A token others can read, or one short enough to guess, is refused at start:
// the daemon would otherwise look protected while it is not.
import { createHash, timingSafeEqual } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { usageError } from "./flags.js";

const MIN_TOKEN_CHARS = 32;

function howToMake(path: string): string {
  return `make one with: head -c 32 /dev/urandom | base64 > ${path}; chmod 600 ${path}`;
}

export function readAdminTokenFile(path: string, flag = "admin-token-file"): string {
  let mode: number;
  let text: string;
  try {
    mode = statSync(path).mode;
    text = readFileSync(path, "utf8").trim();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw usageError(`--${flag}: cannot read ${path} (${code}); check the path, or ${howToMake(path)}`);
  }
  if (mode & 0o077) {
    throw usageError(`--${flag}: ${path} is readable by others (mode ${(mode & 0o777).toString(8)}); anyone on the machine could act as admin. Run: chmod 600 ${path}`);
  }
  if (text.length < MIN_TOKEN_CHARS) {
    throw usageError(`--${flag}: the token in ${path} has ${text.length} characters, fewer than ${MIN_TOKEN_CHARS}; ${howToMake(path)}`);
  }
  if (/\s/.test(text)) throw usageError(`--${flag}: the token in ${path} contains whitespace; put one token on one line (${howToMake(path)})`);
  return text;
}

/** The token of an "Authorization: Bearer <token>" header; undefined when there is none (another scheme counts as none). */
export function bearerToken(header: string | string[] | undefined): string | undefined {
  if (typeof header !== "string") return undefined;
  const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header);
  return m ? m[1] : undefined;
}

const digest = (s: string) => createHash("sha256").update(s).digest();

/** Constant-time in the token's content and length (both sides are hashed first). */
export function tokenMatches(presented: string, expected: string): boolean {
  return timingSafeEqual(digest(presented), digest(expected));
}

const LOOPBACK = /^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|::1|localhost)$/;

export function isLoopbackHost(host: string): boolean {
  return LOOPBACK.test(host);
}
