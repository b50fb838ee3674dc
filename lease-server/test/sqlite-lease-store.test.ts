import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, describe, expect, it } from "vitest";
import { SqliteLeaseStore } from "../src/store/sqlite-lease-store.js";
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
    expect(() => new SqliteLeaseStore(join(notADir, "x.db"))).toThrow(/cannot open SQLite store .*plain-file\/x\.db: .*; check the path/);
  });
});
