// Join tokens in the SQLite lease file, table join_tokens. The table is
// created here (IF NOT EXISTS), apart from the lease schema: it holds no
// leases, and an older server simply never looks at it.
import type Database from "better-sqlite3";
import { KEEP_EXPIRED_MS, type JoinTokenRecord, type JoinTokenStore } from "./join-tokens.js";

const SCHEMA = `
CREATE TABLE IF NOT EXISTS join_tokens (
  id TEXT PRIMARY KEY,
  secret_hash TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  uses INTEGER NOT NULL,
  uses_left INTEGER NOT NULL
);
`;

interface Row { id: string; secret_hash: string; created_at: number; expires_at: number; uses: number; uses_left: number }

const fromRow = (r: Row): JoinTokenRecord => ({ id: r.id, secretHash: r.secret_hash, createdAt: r.created_at, expiresAt: r.expires_at, uses: r.uses, usesLeft: r.uses_left });

export class SqliteJoinTokenStore implements JoinTokenStore {
  readonly #q;

  constructor(db: Database.Database) {
    db.exec(SCHEMA);
    this.#q = {
      insert: db.prepare("INSERT OR IGNORE INTO join_tokens (id, secret_hash, created_at, expires_at, uses, uses_left) VALUES (?, ?, ?, ?, ?, ?)"),
      get: db.prepare<[string], Row>("SELECT * FROM join_tokens WHERE id = ?"),
      all: db.prepare<[], Row>("SELECT * FROM join_tokens ORDER BY created_at, id"),
      del: db.prepare("DELETE FROM join_tokens WHERE id = ?"),
      // One statement: the check and the decrement cannot be split by another writer.
      take: db.prepare("UPDATE join_tokens SET uses_left = uses_left - 1 WHERE id = ? AND uses_left > 0 AND expires_at > ?"),
      purge: db.prepare("DELETE FROM join_tokens WHERE expires_at < ?"),
    };
  }

  async create(t: JoinTokenRecord): Promise<boolean> {
    this.#q.purge.run(t.createdAt - KEEP_EXPIRED_MS);
    return this.#q.insert.run(t.id, t.secretHash, t.createdAt, t.expiresAt, t.uses, t.usesLeft).changes === 1;
  }

  async get(id: string): Promise<JoinTokenRecord | undefined> {
    const r = this.#q.get.get(id);
    return r && fromRow(r);
  }

  async list(): Promise<JoinTokenRecord[]> {
    return this.#q.all.all().map(fromRow);
  }

  async delete(id: string): Promise<boolean> {
    return this.#q.del.run(id).changes === 1;
  }

  async takeUse(id: string, now: number): Promise<boolean> {
    return this.#q.take.run(id, now).changes === 1;
  }
}
