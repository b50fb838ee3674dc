import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, describe, expect, it } from "vitest";
import { SqliteLeaseStore } from "../src/store/sqlite-lease-store.js";
import { SCHEMA_VERSION } from "../src/store/sqlite-schema.js";
import { describeLeaseStoreContract, newLease } from "./lease-store.contract.js";

const dir = mkdtempSync(join(tmpdir(), "weft-sqlite-"));
let n = 0;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describeLeaseStoreContract("sqlite", async () => new SqliteLeaseStore(join(dir, `c${n++}.db`), { historyLimit: 10 }));

describe("SqliteLeaseStore", () => {
  it("keeps leases, revisions and history across reopening the file", async () => {
    const path = join(dir, "reopen.db");
    const a = new SqliteLeaseStore(path);
    await a.create(newLease(1));
    await a.create(newLease(2));
    await a.remove("10.244.2.0/24", "node-2", "released");
    await a.close();
    const b = new SqliteLeaseStore(path);
    const { leases, revision } = await b.listLeases();
    expect(leases.map((l) => l.nodeName)).toEqual(["node-1"]);
    expect(revision).toBe(3);
    expect((await b.eventsSince(0)).map((e) => e.type)).toEqual(["added", "added", "removed"]);
    expect(await b.listFreed()).toEqual([{ subnet: "10.244.2.0/24", nodeName: "node-2", revision: 3 }]);
    const next = await b.create(newLease(3));
    expect(next?.revision).toBe(4);
    await b.close();
  });

  it("uses WAL with full sync so acknowledged writes survive a crash", async () => {
    const path = join(dir, "wal.db");
    const s = new SqliteLeaseStore(path);
    await s.close();
    const db = new Database(path);
    expect(db.pragma("journal_mode", { simple: true })).toBe("wal");
    db.close();
  });

  it("refuses a second store on a file another one holds", async () => {
    const path = join(dir, "exclusive.db");
    const first = new SqliteLeaseStore(path);
    await first.create(newLease(1));
    expect(() => new SqliteLeaseStore(path)).toThrow(/is in use by another process .*own --store file/);
    await first.close();
    const again = new SqliteLeaseStore(path);
    expect((await again.listLeases()).leases).toHaveLength(1);
    await again.close();
  });

  it("gives a clear error when the file cannot be opened", () => {
    const notADir = join(dir, "plain-file");
    writeFileSync(notADir, "");
    expect(() => new SqliteLeaseStore(join(notADir, "x.db"))).toThrow(/SQLite store .*plain-file\/x\.db: .*plain-file is not a directory; fix --store/);
  });
});

describe("SqliteLeaseStore schema", () => {
  // The layout weft wrote before schema 2, as it wrote it.
  const V1 = `
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta (key, value) VALUES ('revision', 2), ('schema', 1), ('store_id', 12345);
CREATE TABLE leases (subnet TEXT PRIMARY KEY, node_name TEXT NOT NULL UNIQUE, public_ip TEXT NOT NULL, attrs TEXT NOT NULL, expires_at INTEGER NOT NULL, revision INTEGER NOT NULL);
CREATE INDEX leases_expires ON leases (expires_at) WHERE expires_at > 0;
CREATE TABLE events (revision INTEGER PRIMARY KEY, type TEXT NOT NULL, lease TEXT NOT NULL);
CREATE TABLE freed (subnet TEXT PRIMARY KEY, node_name TEXT NOT NULL, revision INTEGER NOT NULL);
CREATE INDEX freed_node ON freed (node_name, revision);
CREATE TABLE reservations (subnet TEXT PRIMARY KEY, node_name TEXT NOT NULL UNIQUE);
INSERT INTO leases VALUES ('10.244.1.0/24', 'node-1', '198.18.0.1', '{"type":"host-gw"}', 0, 1);
INSERT INTO events VALUES (1, 'added', '{"subnet":"10.244.1.0/24","nodeName":"node-1","publicIP":"198.18.0.1","attrs":{"type":"host-gw"},"expiresAt":0,"revision":1}');
INSERT INTO events VALUES (2, 'removed', '{"subnet":"10.244.2.0/24","nodeName":"node-2","publicIP":"198.18.0.2","attrs":{"type":"host-gw"},"expiresAt":0,"revision":0}');
`;
  const schemaOf = (path: string) => {
    const db = new Database(path, { readonly: true });
    try {
      return db.prepare<[], { value: number }>("SELECT value FROM meta WHERE key = 'schema'").get()?.value;
    } finally {
      db.close();
    }
  };

  it("lays out a new file at the current version", async () => {
    const path = join(dir, "schema-new.db");
    await new SqliteLeaseStore(path).close();
    expect(schemaOf(path)).toBe(SCHEMA_VERSION);
    expect(SCHEMA_VERSION).toBe(2);
  });

  it("migrates a version 1 file in place, keeping leases, history and the store id", async () => {
    const path = join(dir, "schema-v1.db");
    const db = new Database(path);
    db.exec(V1);
    db.close();
    const s = new SqliteLeaseStore(path);
    expect(await s.storeId()).toBe((12345).toString(16).padStart(12, "0"));
    expect((await s.listLeases())).toEqual({ revision: 2, leases: [{ subnet: "10.244.1.0/24", nodeName: "node-1", publicIP: "198.18.0.1", attrs: { type: "host-gw" }, expiresAt: 0, revision: 1 }] });
    expect((await s.eventsSince(0)).map((e) => [e.type, e.revision, e.reason])).toEqual([["added", 1, undefined], ["removed", 2, undefined]]);
    // The new columns work.
    await s.update("10.244.1.0/24", "node-1", { instanceId: "0123456789abcdef0123456789abcdef" });
    await s.remove("10.244.1.0/24", undefined, "revoked: migrated");
    expect((await s.eventsSince(3)).map((e) => e.reason)).toEqual(["revoked: migrated"]);
    await s.close();
    expect(schemaOf(path)).toBe(2);
    // Opening again is a no-op.
    const again = new SqliteLeaseStore(path);
    expect((await again.listLeases()).revision).toBe(4);
    await again.close();
  });

  it("refuses a file written by a newer weft, and leaves it untouched", () => {
    const path = join(dir, "schema-v9.db");
    const db = new Database(path);
    db.exec(V1.replace("('schema', 1)", "('schema', 9)"));
    db.close();
    expect(() => new SqliteLeaseStore(path)).toThrow(/has schema version 9, written by a newer weft \(this one knows up to 2\); upgrade weft-lease-server/);
    expect(schemaOf(path)).toBe(9);
    const check = new Database(path, { readonly: true });
    expect(check.prepare("SELECT name FROM pragma_table_info('leases') WHERE name = 'instance_id'").get()).toBeUndefined();
    check.close();
  });

  it("refuses a SQLite file that is not a weft store", () => {
    const path = join(dir, "schema-other.db");
    const db = new Database(path);
    db.exec("CREATE TABLE photos (id INTEGER PRIMARY KEY)");
    db.close();
    expect(() => new SqliteLeaseStore(path)).toThrow(/is not a weft lease store \(tables: photos\)/);
  });
});
