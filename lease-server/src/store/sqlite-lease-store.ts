// LeaseStore on an embedded SQLite file (better-sqlite3). WAL with
// synchronous=FULL: a transaction is on disk before the caller is answered, so
// a kill -9 (or power loss) at any moment loses no acknowledged lease. Every
// write is one transaction that bumps the revision and appends to the event
// log, so the log and the table never disagree.
import Database from "better-sqlite3";
import { randomInt } from "node:crypto";
import { WeftError } from "../../../lib/src/errors.js";
import type { BackendAttrs, Lease, LeaseEvent, LeaseEventType } from "../../../lib/src/lease.js";
import type { FreedSubnet, LeaseChange, LeaseStore, NewLease, RemoveReason, Reservation } from "./lease-store.js";
import { applySchema } from "./sqlite-schema.js";
import { checkSqliteFile } from "./sqlite-file.js";

interface LeaseRow { subnet: string; node_name: string; public_ip: string; attrs: string; expires_at: number; revision: number; instance_id: string }

function rowToLease(r: LeaseRow): Lease {
  return {
    subnet: r.subnet, nodeName: r.node_name, publicIP: r.public_ip, attrs: JSON.parse(r.attrs) as BackendAttrs, expiresAt: r.expires_at, revision: r.revision,
    ...(r.instance_id ? { instanceId: r.instance_id } : {}),
  };
}

export interface SqliteStoreOptions {
  /** How many events to keep for resuming watchers. */
  readonly historyLimit?: number;
  /** Accept an existing empty file as a new store (--init-store). */
  readonly initStore?: boolean;
}

export class SqliteLeaseStore implements LeaseStore {
  readonly #db: Database.Database;
  readonly #historyLimit: number;
  readonly #listeners = new Set<(events: readonly LeaseEvent[]) => void>();
  readonly #q;

  /** The open database, for weft data kept beside the leases (join tokens, in their own table). */
  get database(): Database.Database {
    return this.#db;
  }

  constructor(path: string, opts: SqliteStoreOptions = {}) {
    this.#historyLimit = opts.historyLimit ?? 10_000;
    let opened: Database.Database | undefined;
    try {
      checkSqliteFile(path, { initStore: opts.initStore });
      opened = new Database(path);
      this.#db = opened;
      // One server per file: other processes' writes would never reach our
      // watchers or allocator, so the first one holds the file exclusively.
      this.#db.pragma("locking_mode = EXCLUSIVE");
      this.#db.pragma("busy_timeout = 2000");
      this.#db.pragma("journal_mode = WAL");
      this.#db.pragma("synchronous = FULL");
      applySchema(this.#db, path);
      this.#db.prepare("INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?)").run(randomInt(1, 2 ** 47));
    } catch (err) {
      // A refused file must not stay locked by a store nobody can close.
      if (opened?.open) opened.close();
      if (err instanceof WeftError) throw err;
      const locked = /locked|busy/i.test((err as Error).message);
      throw new WeftError("STORE_UNAVAILABLE", locked
        ? `SQLite store ${path} is in use by another process (another weft-lease-server?); stop it, or give this server its own --store file (several servers need a shared store such as etcd)`
        : `cannot open SQLite store ${path}: ${(err as Error).message}; check the path is a writable file on a local disk`, { cause: err });
    }
    const db = this.#db;
    this.#q = {
      revision: db.prepare<[], { value: number }>("SELECT value FROM meta WHERE key = 'revision'"),
      bump: db.prepare("UPDATE meta SET value = value + 1 WHERE key = 'revision'"),
      all: db.prepare<[], LeaseRow>("SELECT * FROM leases ORDER BY subnet"),
      bySubnet: db.prepare<[string], LeaseRow>("SELECT * FROM leases WHERE subnet = ?"),
      byNode: db.prepare<[string], LeaseRow>("SELECT * FROM leases WHERE node_name = ?"),
      insert: db.prepare("INSERT INTO leases (subnet, node_name, public_ip, attrs, expires_at, revision, instance_id) VALUES (?, ?, ?, ?, ?, ?, ?)"),
      updateRow: db.prepare("UPDATE leases SET public_ip = ?, attrs = ?, expires_at = ?, revision = ?, instance_id = ? WHERE subnet = ?"),
      del: db.prepare("DELETE FROM leases WHERE subnet = ?"),
      expired: db.prepare<[number], LeaseRow>("SELECT * FROM leases WHERE expires_at > 0 AND expires_at <= ?"),
      event: db.prepare("INSERT INTO events (revision, type, lease, reason) VALUES (?, ?, ?, ?)"),
      trim: db.prepare("DELETE FROM events WHERE revision <= ?"),
      eventsSince: db.prepare<[number], { revision: number; type: LeaseEventType; lease: string; reason: string }>("SELECT * FROM events WHERE revision > ? ORDER BY revision"),
      alive: db.prepare<[], { value: number }>("SELECT value FROM meta WHERE key = 'alive'"),
      markAlive: db.prepare("INSERT INTO meta (key, value) VALUES ('alive', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"),
      oldestEvent: db.prepare<[], { r: number | null }>("SELECT min(revision) AS r FROM events"),
      freedAll: db.prepare<[], { subnet: string; node_name: string; revision: number }>("SELECT * FROM freed"),
      freedPut: db.prepare("INSERT INTO freed (subnet, node_name, revision) VALUES (?, ?, ?) ON CONFLICT(subnet) DO UPDATE SET node_name = excluded.node_name, revision = excluded.revision"),
      resAll: db.prepare<[], { subnet: string; node_name: string }>("SELECT * FROM reservations ORDER BY subnet"),
      resBySubnet: db.prepare<[string], { subnet: string; node_name: string }>("SELECT * FROM reservations WHERE subnet = ?"),
      resByNode: db.prepare<[string], { subnet: string; node_name: string }>("SELECT * FROM reservations WHERE node_name = ?"),
      resPut: db.prepare("INSERT INTO reservations (subnet, node_name) VALUES (?, ?)"),
      resDel: db.prepare("DELETE FROM reservations WHERE subnet = ?"),
    };
  }

  #revision(): number {
    return this.#q.revision.get()!.value;
  }

  /** Appends one event in the caller's transaction and returns its revision. */
  #record(type: LeaseEventType, lease: Lease, pending: LeaseEvent[], reason = ""): number {
    this.#q.bump.run();
    const revision = this.#revision();
    const withRev = type === "removed" ? lease : { ...lease, revision };
    this.#q.event.run(revision, type, JSON.stringify(withRev), reason);
    if (revision > this.#historyLimit) this.#q.trim.run(revision - this.#historyLimit);
    pending.push({ type, lease: withRev, revision, ...(reason ? { reason } : {}) });
    return revision;
  }

  /** Runs fn in one write transaction, then tells subscribers what committed. */
  #write<T>(fn: (pending: LeaseEvent[]) => T): T {
    const pending: LeaseEvent[] = [];
    let result: T;
    try {
      result = this.#db.transaction(() => fn(pending)).immediate();
    } catch (err) {
      // A refused file must not stay locked by a store nobody can close.
      const opened = (this as { db?: Database.Database }).db;
      if (opened?.open) opened.close();
      if (err instanceof WeftError) throw err;
      throw new WeftError("STORE_UNAVAILABLE", `SQLite write failed: ${(err as Error).message}`, { cause: err });
    }
    if (pending.length > 0) {
      // The write has committed: a failing listener must neither skip the others nor fail the caller.
      for (const l of this.#listeners) {
        try {
          l(pending);
        } catch (err) {
          process.emitWarning(`lease store listener failed: ${(err as Error).stack ?? String(err)}`);
        }
      }
    }
    return result;
  }

  async storeId(): Promise<string> {
    const row = this.#db.prepare<[], { value: number }>("SELECT value FROM meta WHERE key = 'store_id'").get()!;
    return row.value.toString(16).padStart(12, "0");
  }

  async listLeases(): Promise<{ leases: Lease[]; revision: number }> {
    return this.#db.transaction(() => ({ leases: this.#q.all.all().map(rowToLease), revision: this.#revision() }))();
  }

  async getLeaseByNode(nodeName: string): Promise<Lease | undefined> {
    const r = this.#q.byNode.get(nodeName);
    return r && rowToLease(r);
  }

  async listReservations(): Promise<Reservation[]> {
    return this.#q.resAll.all().map((r) => ({ subnet: r.subnet, nodeName: r.node_name }));
  }

  async listFreed(): Promise<FreedSubnet[]> {
    return this.#q.freedAll.all().map((r) => ({ subnet: r.subnet, nodeName: r.node_name, revision: r.revision }));
  }

  async create(l: NewLease): Promise<Lease | undefined> {
    return this.#write((pending) => {
      if (this.#q.bySubnet.get(l.subnet) || this.#q.byNode.get(l.nodeName)) return undefined;
      const lease: Lease = { ...l, revision: 0 };
      const revision = this.#record("added", lease, pending);
      this.#q.insert.run(l.subnet, l.nodeName, l.publicIP, JSON.stringify(l.attrs), l.expiresAt, revision, l.instanceId ?? "");
      return { ...lease, revision };
    });
  }

  async update(subnet: string, nodeName: string, change: LeaseChange): Promise<Lease | undefined> {
    return this.#write((pending) => {
      const row = this.#q.bySubnet.get(subnet);
      if (!row || row.node_name !== nodeName) return undefined;
      const next: Lease = { ...rowToLease(row), ...change };
      const revision = this.#record("changed", next, pending);
      this.#q.updateRow.run(next.publicIP, JSON.stringify(next.attrs), next.expiresAt, revision, next.instanceId ?? "", subnet);
      return { ...next, revision };
    });
  }

  #removeRow(row: LeaseRow, pending: LeaseEvent[], reason: RemoveReason): Lease {
    const lease = rowToLease(row);
    this.#q.del.run(row.subnet);
    const revision = this.#record("removed", lease, pending, reason);
    this.#q.freedPut.run(row.subnet, row.node_name, revision);
    return lease;
  }

  async remove(subnet: string, nodeName: string | undefined, reason: RemoveReason): Promise<Lease | undefined> {
    return this.#write((pending) => {
      const row = this.#q.bySubnet.get(subnet);
      if (!row || (nodeName !== undefined && row.node_name !== nodeName)) return undefined;
      return this.#removeRow(row, pending, reason);
    });
  }

  async expire(now: number): Promise<Lease[]> {
    // A read first keeps the common case (nothing expired) free of write locks.
    if (this.#q.expired.all(now).length === 0) return [];
    return this.#write((pending) => this.#q.expired.all(now).map((row) => this.#removeRow(row, pending, "expired")));
  }

  async lastAlive(): Promise<number | undefined> {
    return this.#q.alive.get()?.value;
  }

  async markAlive(now: number): Promise<void> {
    try {
      this.#q.markAlive.run(now);
    } catch (err) {
      throw new WeftError("STORE_UNAVAILABLE", `SQLite write failed: ${(err as Error).message}`, { cause: err });
    }
  }

  async putReservation(r: Reservation): Promise<void> {
    this.#write(() => {
      const bySubnet = this.#q.resBySubnet.get(r.subnet);
      if (bySubnet?.node_name === r.nodeName) return;
      if (bySubnet) throw new WeftError("ALREADY_EXISTS", `subnet ${r.subnet} is already reserved for node ${bySubnet.node_name}; delete that reservation first`);
      const byNode = this.#q.resByNode.get(r.nodeName);
      if (byNode) throw new WeftError("ALREADY_EXISTS", `node ${r.nodeName} already has a reservation (${byNode.subnet}); delete it first`);
      const holder = this.#q.bySubnet.get(r.subnet);
      if (holder && holder.node_name !== r.nodeName) {
        throw new WeftError("ALREADY_EXISTS", `subnet ${r.subnet} is leased by node ${holder.node_name}; revoke that lease first`);
      }
      this.#q.resPut.run(r.subnet, r.nodeName);
    });
  }

  async deleteReservation(subnet: string): Promise<boolean> {
    return this.#write(() => this.#q.resDel.run(subnet).changes > 0);
  }

  async eventsSince(from: number): Promise<LeaseEvent[]> {
    return this.#db.transaction(() => {
      const current = this.#revision();
      if (from >= current) return [];
      const oldest = this.#q.oldestEvent.get()!.r;
      if (oldest === null || from < oldest - 1) {
        throw new WeftError("REVISION_COMPACTED", `revision ${from} is no longer in the history (oldest kept: ${oldest ?? current})`);
      }
      return this.#q.eventsSince.all(from).map((e) => ({ type: e.type, lease: JSON.parse(e.lease) as Lease, revision: e.revision, ...(e.reason ? { reason: e.reason } : {}) }));
    })();
  }

  subscribe(listener: (events: readonly LeaseEvent[]) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  async close(): Promise<void> {
    this.#listeners.clear();
    if (this.#db.open) this.#db.close();
  }
}
