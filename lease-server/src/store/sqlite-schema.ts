// The SQLite store's layout and its migrations. The version lives in the meta
// table (key 'schema'), written in the same transaction as the layout it
// names, so a crash mid-migration leaves the old version and the old layout.
// A file written by a newer weft is refused, never "migrated" backwards.
//   1: leases, events, freed, reservations, meta (revision, schema, store_id)
//   2: leases.instance_id (the agent instance holding the lease), events.reason
//      (why a lease was removed), meta 'alive' (last time a server served it)
import type Database from "better-sqlite3";
import { WeftError } from "../../../lib/src/errors.js";

export const SCHEMA_VERSION = 2;

const LAYOUT = `
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta (key, value) VALUES ('revision', 0), ('schema', ${SCHEMA_VERSION});
CREATE TABLE leases (
  subnet TEXT PRIMARY KEY,
  node_name TEXT NOT NULL UNIQUE,
  public_ip TEXT NOT NULL,
  attrs TEXT NOT NULL,
  expires_at INTEGER NOT NULL,
  revision INTEGER NOT NULL,
  instance_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX leases_expires ON leases (expires_at) WHERE expires_at > 0;
CREATE TABLE events (revision INTEGER PRIMARY KEY, type TEXT NOT NULL, lease TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '');
CREATE TABLE freed (subnet TEXT PRIMARY KEY, node_name TEXT NOT NULL, revision INTEGER NOT NULL);
CREATE INDEX freed_node ON freed (node_name, revision);
CREATE TABLE reservations (subnet TEXT PRIMARY KEY, node_name TEXT NOT NULL UNIQUE);
`;

/** Steps from version n to n+1, by n. */
const MIGRATIONS: Record<number, string> = {
  1: `
ALTER TABLE leases ADD COLUMN instance_id TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN reason TEXT NOT NULL DEFAULT '';
UPDATE meta SET value = 2 WHERE key = 'schema';
`,
};

/**
 * Brings an open database to SCHEMA_VERSION: lays out an empty one, migrates an older one, refuses a newer
 * one or one that is not a weft store. Call it after any file-level checks, before using the store.
 */
export function applySchema(db: Database.Database, path: string): void {
  db.transaction(() => {
    const tables = db.prepare<[], { name: string }>("SELECT name FROM sqlite_master WHERE type = 'table'").all().map((t) => t.name);
    if (tables.length === 0) {
      db.exec(LAYOUT);
      return;
    }
    const version = tables.includes("meta") ? db.prepare<[], { value: number }>("SELECT value FROM meta WHERE key = 'schema'").get()?.value : undefined;
    if (version === undefined || !tables.includes("leases")) {
      throw new WeftError("STORE_UNAVAILABLE", `SQLite store ${path} is not a weft lease store (tables: ${tables.slice(0, 8).join(", ")}); point --store at the lease server's own file`);
    }
    if (version > SCHEMA_VERSION) {
      throw new WeftError("STORE_UNAVAILABLE", `SQLite store ${path} has schema version ${version}, written by a newer weft (this one knows up to ${SCHEMA_VERSION}); upgrade weft-lease-server (the file is left untouched)`);
    }
    for (let v = version; v < SCHEMA_VERSION; v++) {
      const step = MIGRATIONS[v];
      if (!step) throw new WeftError("STORE_UNAVAILABLE", `SQLite store ${path} has schema version ${v}, which this weft cannot migrate; upgrade through an earlier weft release first`);
      db.exec(step);
    }
  }).immediate();
}

export function schemaVersion(db: Database.Database): number | undefined {
  return db.prepare<[], { value: number }>("SELECT value FROM meta WHERE key = 'schema'").get()?.value;
}
