// Checks the SQLite store's file before the store opens it. SQLite happily
// treats an empty file as a new database, so a file truncated to 0 bytes (a
// bad restore, a full disk during a copy) would silently become an empty store:
// every lease, the stickiness history and the store id gone, and agents told
// to re-sync against nothing. A new store is made only where no file exists,
// or over an empty file when the operator says so (--init-store).
import { accessSync, closeSync, constants, openSync, readSync, statSync, statfsSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";
import { WeftError } from "../../../lib/src/errors.js";

const MAGIC = Buffer.from("SQLite format 3\0", "latin1");

export interface SqliteFileOptions {
  /** Accept an existing empty file as a new store. */
  readonly initStore?: boolean;
}

function refuse(message: string, cause?: unknown): never {
  throw new WeftError("STORE_UNAVAILABLE", message, cause === undefined ? undefined : { cause });
}

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException).code;
}

function accessProblem(path: string, mode: number): string | undefined {
  try {
    accessSync(path, mode);
    return undefined;
  } catch (err) {
    return errno(err) ?? String(err);
  }
}

/** What a failed access check means, in words, with the fix. */
function explain(what: string, code: string): string {
  if (code === "EROFS") return `${what} is on a read-only file system; give --store a path on a writable disk`;
  if (code === "EACCES" || code === "EPERM") return `${what} is not readable and writable by this user (uid ${process.getuid?.() ?? "?"}); fix its owner or mode`;
  return `${what}: ${code}`;
}

/**
 * Throws STORE_UNAVAILABLE, naming the path and the fix, unless `path` is a
 * usable weft SQLite file or a place where a new one can be made. Whether the
 * tables are weft's is the schema code's question (sqlite-schema.ts).
 */
export function checkSqliteFile(path: string, opts: SqliteFileOptions = {}): void {
  if (path === ":memory:") return;
  const dir = dirname(path);
  let dirStat;
  try {
    dirStat = statSync(dir);
  } catch (err) {
    refuse(`SQLite store ${path}: directory ${dir} ${errno(err) === "ENOENT" ? "does not exist" : `cannot be read (${errno(err)})`}; create it (mkdir -p ${dir}) or fix --store`, err);
  }
  if (!dirStat.isDirectory()) refuse(`SQLite store ${path}: ${dir} is not a directory; fix --store`);
  // The write-ahead log and its index live beside the file.
  const dirProblem = accessProblem(dir, constants.W_OK | constants.X_OK);

  let st;
  try {
    st = statSync(path);
  } catch (err) {
    if (errno(err) !== "ENOENT") refuse(`SQLite store ${path} cannot be read (${errno(err)}); check its permissions`, err);
    if (dirProblem) refuse(`cannot create SQLite store ${path}: ${explain(`directory ${dir}`, dirProblem)}`);
    return;
  }
  if (!st.isFile()) refuse(`SQLite store ${path} is not a regular file; point --store at the lease database file`);
  const fileProblem = accessProblem(path, constants.R_OK | constants.W_OK);
  if (fileProblem) refuse(`SQLite store ${path}: ${explain("the file", fileProblem)}`);
  if (dirProblem) refuse(`SQLite store ${path}: ${explain(`directory ${dir} (SQLite keeps its write-ahead log there)`, dirProblem)}`);

  if (st.size === 0) {
    if (opts.initStore) return;
    refuse(`SQLite store ${path} exists but is empty (0 bytes): its leases, subnet history and store id are gone (a truncated or failed copy?). Restore it from a backup, or pass --init-store to start an empty store there on purpose`);
  }
  const head = Buffer.alloc(MAGIC.length);
  let fd: number | undefined;
  try {
    fd = openSync(path, "r");
    readSync(fd, head, 0, head.length, 0);
  } catch (err) {
    refuse(`SQLite store ${path} cannot be read (${errno(err) ?? (err as Error).message}); check the file and the disk`, err);
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  if (!head.equals(MAGIC)) {
    refuse(`SQLite store ${path} is not a SQLite database (${st.size} bytes, no SQLite header); restore the lease database from a backup, or move this file away to start a new store (--init-store never overwrites a file with content)`);
  }
  quickCheck(path);
}

/** SQLite says "disk I/O error" when it cannot create its WAL index on a full disk. */
function fullDiskHint(path: string): string | undefined {
  try {
    const fs = statfsSync(dirname(path));
    const free = fs.bavail * fs.bsize;
    return free < 1 << 20 ? `the disk holding ${dirname(path)} is full (${free} bytes free); free some space` : undefined;
  } catch {
    return undefined;
  }
}

/** PRAGMA quick_check on a separate short-lived connection, before the store takes its exclusive lock. */
function quickCheck(path: string): void {
  let db: Database.Database | undefined;
  let problems: string[];
  try {
    db = new Database(path, { fileMustExist: true });
    db.pragma("busy_timeout = 2000");
    problems = (db.pragma("quick_check(5)") as { quick_check: string }[]).map((r) => r.quick_check);
  } catch (err) {
    const code = (err as { code?: string }).code ?? "";
    if (/BUSY|LOCKED/.test(code)) {
      refuse(`SQLite store ${path} is in use by another process (another weft-lease-server?); stop it, or give this server its own --store file (several servers need a shared store such as etcd)`, err);
    }
    if (/CORRUPT|NOTADB/.test(code)) {
      refuse(`SQLite store ${path} is corrupt (${(err as Error).message}); restore it from a backup (sqlite3 ${path} .recover may save some of it)`, err);
    }
    refuse(`SQLite store ${path} cannot be opened (${(err as Error).message}); ${fullDiskHint(path) ?? "check the file and the disk"}`, err);
  } finally {
    db?.close();
  }
  if (problems.length !== 1 || problems[0] !== "ok") {
    const what = problems.join("; ").replace(/\*\*\* in database main \*\*\*\s*/g, "").replace(/\s*\n\s*/g, "; ").slice(0, 300);
    refuse(`SQLite store ${path} is corrupt (quick_check: ${what}); restore it from a backup (sqlite3 ${path} .recover may save some of it)`);
  }
}
