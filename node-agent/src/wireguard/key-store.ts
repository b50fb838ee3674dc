// The node's WireGuard private key, in the state dir (mode 0600): made on
// first start, kept across restarts and reboots (Flannel keeps it on tmpfs, so
// every reboot changes it). During a key rotation the previous key is kept
// beside it (`.previous`): to go back if the new public key cannot be
// published, and until every peer has shaken hands with the new one.
import { mkdir, open, readFile, rename, rm } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { WeftError } from "../../../lib/src/errors.js";
import { generateKeyPair, isKey, publicKeyOf, type KeyPair } from "./keys.js";

export class KeyStore {
  constructor(private readonly dir: string, private readonly device: string) {}

  get path(): string {
    return join(this.dir, `wireguard-${this.device}.key`);
  }

  get previousPath(): string {
    return `${this.path}.previous`;
  }

  private async read(path: string): Promise<KeyPair | undefined> {
    let text: string;
    try {
      text = (await readFile(path, "utf8")).trim();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw new WeftError("CONFIG_INVALID", `cannot read the WireGuard key ${path}: ${(err as Error).message}; check --state-dir and its permissions`);
    }
    if (!isKey(text)) {
      throw new WeftError("CONFIG_INVALID", `${path} is not a WireGuard private key (44 base64 characters, as wg genkey prints); delete it to have a new key made (peers learn it from the lease)`);
    }
    return { privateKey: text, publicKey: publicKeyOf(text) };
  }

  private async write(path: string, privateKey: string): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const tmp = `${path}.${randomBytes(6).toString("hex")}.tmp`;
    // Synced before the rename: after a power cut the key file must be whole, not empty.
    const fh = await open(tmp, "w", 0o600);
    try {
      await fh.writeFile(`${privateKey}\n`);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  }

  /** The current key pair; made and saved on first start. */
  async load(): Promise<KeyPair> {
    const have = await this.read(this.path);
    if (have) return have;
    const made = generateKeyPair();
    await this.write(this.path, made.privateKey);
    return made;
  }

  async previous(): Promise<KeyPair | undefined> {
    return this.read(this.previousPath);
  }

  /** Saves a new key as current, keeping `old` as the previous one. */
  async rotate(old: KeyPair): Promise<KeyPair> {
    const next = generateKeyPair();
    await this.write(this.previousPath, old.privateKey);
    await this.write(this.path, next.privateKey);
    return next;
  }

  /** Undoes rotate(): the previous key is current again. */
  async restorePrevious(): Promise<void> {
    await rename(this.previousPath, this.path);
  }

  async forgetPrevious(): Promise<void> {
    await rm(this.previousPath, { force: true });
  }
}
