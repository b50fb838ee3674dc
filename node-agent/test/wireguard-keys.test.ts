// WireGuard keys (node:crypto X25519, checked against a vector from `wg pubkey`
// and, where installed, against `wg` itself) and the key store in the state dir.
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { WeftError } from "../../lib/src/errors.js";
import { KeyStore } from "../src/wireguard/key-store.js";
import { generateKeyPair, isKey, keyFromHex, keyToHex, publicKeyOf, ZERO_KEY } from "../src/wireguard/keys.js";
import { requireTools } from "../../test/tools.js";

// Verified with: echo <private> | wg pubkey
const VECTOR_PRIVATE = "qGqWgGaKmC3G4q+nn7w4tpp0NKndW7JVHttEmHM5b3Q=";
const VECTOR_PUBLIC = "4gWfAxuBB2AecKbmbl1MM43Eyka2iRj0xeV0PkkLr3Q=";
const VECTOR_PRIVATE_HEX = "a86a9680668a982dc6e2afa79fbc38b69a7434a9dd5bb2551edb449873396f74";

describe("wireguard keys", () => {
  it("publicKeyOf matches wg pubkey on a known vector", () => {
    expect(publicKeyOf(VECTOR_PRIVATE)).toBe(VECTOR_PUBLIC);
  });

  it("generateKeyPair makes valid, distinct keys whose public key is publicKeyOf(private)", () => {
    const a = generateKeyPair();
    const b = generateKeyPair();
    for (const k of [a, b]) {
      expect(isKey(k.privateKey)).toBe(true);
      expect(isKey(k.publicKey)).toBe(true);
      expect(publicKeyOf(k.privateKey)).toBe(k.publicKey);
      expect(k.publicKey).not.toBe(k.privateKey);
    }
    expect(a.privateKey).not.toBe(b.privateKey);
  });

  it.skipIf(!requireTools({ wg: "wireguard-tools" }, "comparing keys with wg pubkey"))("wg pubkey agrees with generateKeyPair", () => {
    for (let i = 0; i < 3; i++) {
      const k = generateKeyPair();
      expect(execFileSync("wg", ["pubkey"], { input: `${k.privateKey}\n`, encoding: "utf8" }).trim()).toBe(k.publicKey);
    }
    // And our publicKeyOf on a key wg made.
    const wgPriv = execFileSync("wg", ["genkey"], { encoding: "utf8" }).trim();
    expect(isKey(wgPriv)).toBe(true);
    expect(publicKeyOf(wgPriv)).toBe(execFileSync("wg", ["pubkey"], { input: `${wgPriv}\n`, encoding: "utf8" }).trim());
  });

  it("isKey accepts 44-char base64 of 32 bytes only", () => {
    expect(isKey(VECTOR_PRIVATE)).toBe(true);
    expect(isKey(VECTOR_PUBLIC)).toBe(true);
    expect(isKey(ZERO_KEY)).toBe(true);
    expect(isKey(Buffer.alloc(32, 0xff).toString("base64"))).toBe(true);
    for (const bad of [
      "",
      "garbage",
      VECTOR_PRIVATE.slice(0, 43), // padding missing
      `${VECTOR_PRIVATE}A`, // 45 characters
      ` ${VECTOR_PRIVATE}`, // not trimmed
      `${VECTOR_PRIVATE}\n`,
      Buffer.alloc(31).toString("base64"), // 44 characters, 31 bytes ("==")
      Buffer.alloc(33).toString("base64"), // 44 characters, 33 bytes (no padding)
      Buffer.alloc(32, 0xff).toString("base64url") + "=", // base64url alphabet (- and _)
      VECTOR_PRIVATE_HEX, // hex, as UAPI carries it
      "!".repeat(43) + "=",
    ]) {
      expect(isKey(bad), JSON.stringify(bad)).toBe(false);
    }
  });

  it("keyToHex/keyFromHex convert to and from UAPI's hex", () => {
    expect(keyToHex(VECTOR_PRIVATE)).toBe(VECTOR_PRIVATE_HEX);
    expect(keyFromHex(VECTOR_PRIVATE_HEX)).toBe(VECTOR_PRIVATE);
    expect(keyToHex(ZERO_KEY)).toBe("0".repeat(64));
    for (let i = 0; i < 5; i++) {
      const k = generateKeyPair().privateKey;
      expect(keyToHex(k)).toMatch(/^[0-9a-f]{64}$/);
      expect(keyFromHex(keyToHex(k))).toBe(k);
    }
  });
});

describe("KeyStore", () => {
  const dirs: string[] = [];
  const tempDir = () => {
    const d = mkdtempSync(join(tmpdir(), "weft-keys-"));
    dirs.push(d);
    return d;
  };
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  it("makes a key on first load (mode 0600) and returns the same pair afterwards and from a new store", async () => {
    const dir = join(tempDir(), "state"); // not there yet: load() makes it
    const store = new KeyStore(dir, "weft-wg");
    expect(store.path).toBe(join(dir, "wireguard-weft-wg.key"));
    expect(existsSync(store.path)).toBe(false);

    const first = await store.load();
    expect(isKey(first.privateKey)).toBe(true);
    expect(first.publicKey).toBe(publicKeyOf(first.privateKey));
    expect(statSync(store.path).mode & 0o777).toBe(0o600);
    expect(readFileSync(store.path, "utf8").trim()).toBe(first.privateKey);

    expect(await store.load()).toEqual(first);
    expect(await new KeyStore(dir, "weft-wg").load()).toEqual(first);
    // Another device has its own key.
    const other = await new KeyStore(dir, "weft-wg2").load();
    expect(other.privateKey).not.toBe(first.privateKey);
    expect(await store.load()).toEqual(first);
    // No temporary files left behind.
    expect(readdirSync(dir).sort()).toEqual(["wireguard-weft-wg.key", "wireguard-weft-wg2.key"]);
  });

  it("reads a key written by wg genkey (with its newline)", async () => {
    const dir = tempDir();
    const store = new KeyStore(dir, "wg0");
    writeFileSync(store.path, `${VECTOR_PRIVATE}\n`, { mode: 0o600 });
    expect(await store.load()).toEqual({ privateKey: VECTOR_PRIVATE, publicKey: VECTOR_PUBLIC });
  });

  it("a corrupt key file is CONFIG_INVALID naming the path and the fix, and is left alone", async () => {
    const dir = tempDir();
    const store = new KeyStore(dir, "weft-wg");
    writeFileSync(store.path, "not a key\n");
    let err: unknown;
    try { await store.load(); } catch (e) { err = e; }
    expect(err).toBeInstanceOf(WeftError);
    expect(err).toMatchObject({ code: "CONFIG_INVALID" });
    const msg = (err as Error).message;
    expect(msg).toContain(store.path);
    expect(msg).toMatch(/not a WireGuard private key/);
    expect(msg).toMatch(/delete it/);
    expect(readFileSync(store.path, "utf8")).toBe("not a key\n");
  });

  it("an unreadable key path is CONFIG_INVALID naming the path", async () => {
    const dir = tempDir();
    const store = new KeyStore(dir, "weft-wg");
    mkdirSync(store.path); // EISDIR on read
    await expect(store.load()).rejects.toMatchObject({ code: "CONFIG_INVALID", message: expect.stringContaining(`cannot read the WireGuard key ${store.path}`) });
  });

  it("rotate keeps the old key as .previous; restorePrevious brings it back", async () => {
    const dir = tempDir();
    const store = new KeyStore(dir, "weft-wg");
    expect(store.previousPath).toBe(`${store.path}.previous`);
    const old = await store.load();
    expect(await store.previous()).toBeUndefined();

    const next = await store.rotate(old);
    expect(isKey(next.privateKey)).toBe(true);
    expect(next.publicKey).toBe(publicKeyOf(next.privateKey));
    expect(next.privateKey).not.toBe(old.privateKey);
    expect(await store.load()).toEqual(next);
    expect(await new KeyStore(dir, "weft-wg").load()).toEqual(next);
    expect(await store.previous()).toEqual(old);
    expect(statSync(store.path).mode & 0o777).toBe(0o600);
    expect(statSync(store.previousPath).mode & 0o777).toBe(0o600);
    expect(readdirSync(dir).sort()).toEqual(["wireguard-weft-wg.key", "wireguard-weft-wg.key.previous"]);

    await store.restorePrevious();
    expect(await store.load()).toEqual(old);
    expect(await store.previous()).toBeUndefined();
    expect(existsSync(store.previousPath)).toBe(false);
  });

  it("forgetPrevious deletes the previous key and is idempotent", async () => {
    const dir = tempDir();
    const store = new KeyStore(dir, "weft-wg");
    const old = await store.load();
    const next = await store.rotate(old);
    await store.forgetPrevious();
    expect(existsSync(store.previousPath)).toBe(false);
    expect(await store.previous()).toBeUndefined();
    expect(await store.load()).toEqual(next);
    await expect(store.forgetPrevious()).resolves.toBeUndefined();
    await expect(store.forgetPrevious()).resolves.toBeUndefined();
    expect(await store.load()).toEqual(next);
  });
});
