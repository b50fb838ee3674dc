// WireGuard keys with node:crypto (X25519): no `wg genkey` needed. Keys are
// the raw 32 bytes in base64, as `wg` prints them.
import { createPrivateKey, createPublicKey, generateKeyPairSync } from "node:crypto";

/** PKCS#8 DER of an X25519 private key is this fixed prefix and the 32 raw bytes. */
const PKCS8_X25519 = Buffer.from("302e020100300506032b656e04220420", "hex");

export interface KeyPair {
  readonly privateKey: string;
  readonly publicKey: string;
}

const b64 = (b64url: string): string => Buffer.from(b64url, "base64url").toString("base64");

export function generateKeyPair(): KeyPair {
  const { privateKey, publicKey } = generateKeyPairSync("x25519");
  return { privateKey: b64(privateKey.export({ format: "jwk" }).d!), publicKey: b64(publicKey.export({ format: "jwk" }).x!) };
}

/** A base64 string of exactly 32 bytes (a WireGuard private, public or pre-shared key). */
export function isKey(s: string): boolean {
  // 43 base64 characters and one "=" are always exactly 32 bytes.
  return /^[A-Za-z0-9+/]{43}=$/.test(s);
}

export function publicKeyOf(privateKey: string): string {
  const der = Buffer.concat([PKCS8_X25519, Buffer.from(privateKey, "base64")]);
  const pub = createPublicKey(createPrivateKey({ key: der, format: "der", type: "pkcs8" }));
  return pub.export({ format: "der", type: "spki" }).subarray(-32).toString("base64");
}

export const keyToHex = (k: string): string => Buffer.from(k, "base64").toString("hex");
export const keyFromHex = (h: string): string => Buffer.from(h, "hex").toString("base64");
export const ZERO_KEY = Buffer.alloc(32).toString("base64");
