// The join token stores against real storage: a SQLite file and a real etcd.
// The same cases run on both; "two servers" means two store objects on one
// file or one etcd, spending uses of one token at the same time.
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { Etcd3 } from "etcd3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pino } from "pino";
import { JoinTokens, type JoinTokenRecord, type JoinTokenStore } from "../src/identity/join-tokens.js";
import { SqliteJoinTokenStore } from "../src/identity/sqlite-join-token-store.js";
import { EtcdJoinTokenStore } from "../src/identity/etcd-join-token-store.js";
import { SqliteLeaseStore } from "../src/store/sqlite-lease-store.js";
import { EtcdLeaseStore } from "../src/store/etcd-lease-store.js";
import { etcdAvailable, startEtcd, type EtcdProcess } from "../../test/etcd.js";
import { tempDir } from "./helpers.js";

const HOUR = 3_600_000;
const rec = (id: string, o: Partial<JoinTokenRecord> = {}): JoinTokenRecord => ({ id, secretHash: "ab".repeat(32), createdAt: Date.now(), expiresAt: Date.now() + HOUR, uses: 3, usesLeft: 3, ...o });

function describeTokenStore(name: string, make: () => Promise<{ a: JoinTokenStore; b: JoinTokenStore }>) {
  describe(`${name} join token store`, () => {
    it("creates, refuses a taken id, reads, lists and deletes", async () => {
      const { a, b } = await make();
      expect(await a.create(rec("aaaaaa"))).toBe(true);
      expect(await b.create(rec("aaaaaa", { uses: 9 }))).toBe(false);
      expect(await a.create(rec("bbbbbb", { createdAt: Date.now() + 1 }))).toBe(true);
      expect(await b.get("aaaaaa")).toMatchObject({ id: "aaaaaa", uses: 3, usesLeft: 3 });
      expect((await b.list()).map((t) => t.id)).toEqual(["aaaaaa", "bbbbbb"]);
      expect(await b.delete("aaaaaa")).toBe(true);
      expect(await a.delete("aaaaaa")).toBe(false);
      expect(await a.get("aaaaaa")).toBeUndefined();
    });

    it("spends uses until none are left, and none of an expired token", async () => {
      const { a } = await make();
      await a.create(rec("cccccc", { uses: 2, usesLeft: 2 }));
      expect(await a.takeUse("cccccc", Date.now())).toBe(true);
      expect(await a.takeUse("cccccc", Date.now())).toBe(true);
      expect(await a.takeUse("cccccc", Date.now())).toBe(false);
      expect((await a.get("cccccc"))!.usesLeft).toBe(0);
      await a.create(rec("dddddd"));
      expect(await a.takeUse("dddddd", Date.now() + HOUR)).toBe(false);
      expect(await a.takeUse("zzzzzz", Date.now())).toBe(false);
    });

    it("gives concurrent spenders on two stores exactly the uses there are", async () => {
      const { a, b } = await make();
      await a.create(rec("eeeeee", { uses: 5, usesLeft: 5 }));
      const results = await Promise.all(Array.from({ length: 16 }, (_, i) => (i % 2 ? a : b).takeUse("eeeeee", Date.now())));
      expect(results.filter(Boolean)).toHaveLength(5);
      expect((await b.get("eeeeee"))!.usesLeft).toBe(0);
    });

    it("JoinTokens: token text <id>.<secret>, only the hash stored, checks and spends", async () => {
      const { a, b } = await make();
      const t = new JoinTokens(a);
      const { token, record } = await t.create(HOUR, 1);
      expect(token).toMatch(/^[a-z0-9]{6}\.[a-z0-9]{16}$/);
      expect(JSON.stringify(await b.get(record.id))).not.toContain(token.slice(7));
      const checked = await new JoinTokens(b).check(token);
      await new JoinTokens(b).spend(checked);
      await expect(t.spend(checked)).rejects.toThrow(/is used up/);
      await expect(t.check(token)).rejects.toMatchObject({ code: "PERMISSION_DENIED", message: expect.stringMatching(/is used up/) });
      await expect(t.check("not-a-token")).rejects.toThrow(/join token is malformed/);
    });
  });
}

const dir = tempDir("weft-token-store-");
afterAll(() => dir.cleanup());

describeTokenStore("SQLite", async () => {
  const path = join(dir.path, `${randomBytes(4).toString("hex")}.db`);
  const store = new SqliteLeaseStore(path);
  // One server per SQLite file: two token stores share its one connection.
  return { a: new SqliteJoinTokenStore(store.database), b: new SqliteJoinTokenStore(store.database) };
});

describe.skipIf(!etcdAvailable())("on a real etcd", () => {
  let etcd: EtcdProcess;
  const stores: EtcdLeaseStore[] = [];
  let raw: Etcd3;
  beforeAll(async () => {
    etcd = await startEtcd();
    raw = new Etcd3({ hosts: etcd.endpoints });
  }, 30_000);
  afterAll(async () => {
    for (const s of stores) await s.close();
    raw?.close();
    await etcd?.stop();
  });
  const prefix = `/weft-test/${randomBytes(4).toString("hex")}/network`;

  describeTokenStore("etcd", async () => {
    const p = `/weft-test/${randomBytes(4).toString("hex")}/network`;
    const two = [0, 1].map(() => new EtcdLeaseStore({ endpoints: etcd.endpoints, prefix: p, log: pino({ level: "silent" }) }));
    stores.push(...two);
    return { a: new EtcdJoinTokenStore(two[0]!.client, p), b: new EtcdJoinTokenStore(two[1]!.client, p) };
  });

  it("keeps tokens under <prefix>/weft/join-tokens/<id> with an etcd lease that outlives the token by a day", async () => {
    const s = new EtcdLeaseStore({ endpoints: etcd.endpoints, prefix, log: pino({ level: "silent" }) });
    stores.push(s);
    const t = new EtcdJoinTokenStore(s.client, prefix);
    await t.create(rec("ffffff", { expiresAt: Date.now() + HOUR }));
    expect(await t.takeUse("ffffff", Date.now())).toBe(true);
    const r = await raw.kv.range({ key: Buffer.from(`${prefix}/weft/join-tokens/ffffff`) });
    expect(JSON.parse(r.kvs[0]!.value.toString())).toMatchObject({ id: "ffffff", usesLeft: 2 });
    // Spending a use kept the key's lease (put with ignore_lease).
    const ttl = await raw.leaseClient.leaseTimeToLive({ ID: r.kvs[0]!.lease, keys: false });
    expect(Number(ttl.TTL)).toBeGreaterThan(24 * 3600);
    expect(Number(ttl.TTL)).toBeLessThanOrEqual(25 * 3600);
  });
});
