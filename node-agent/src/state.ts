// What must survive an agent restart but not live in the kernel: the VTEP MAC
// (peers' FDB entries point at it, so a new one would break traffic until they
// all catch up). Stored as JSON in the state dir, written atomically. Beside
// it, instance-id: this agent's random identity, which binds its lease to it
// on servers without mTLS (a second agent with the same --node-name is refused).
import { chmod, mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { WeftError } from "../../lib/src/errors.js";
import { isValidMac } from "../../lib/src/lease.js";
import type { Logger } from "../../lib/src/logger.js";

interface StateFile { vtepMacs?: Record<string, string> }

export class AgentState {
  constructor(private readonly dir: string, private readonly log?: Logger) {}

  private get path(): string {
    return join(this.dir, "agent-state.json");
  }

  private async load(): Promise<StateFile> {
    try {
      const parsed = JSON.parse(await readFile(this.path, "utf8")) as unknown;
      if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new Error("not a JSON object");
      return parsed as StateFile;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return {};
      // A corrupt file must not stop the agent; the device's current MAC is adopted instead.
      this.log?.warn({ path: this.path, err: (err as Error).message }, "state file unreadable or corrupt; ignoring it (the VTEP MAC may change)");
      return {};
    }
  }

  /**
   * This agent instance's id, made once (random, 0600). Same state dir, same id: a restarted agent takes its
   * lease back; a copy of the node with a fresh state dir is another instance.
   */
  async instanceId(): Promise<string> {
    const path = join(this.dir, "instance-id");
    const valid = (s: string) => /^[0-9a-f]{32}$/.test(s);
    try {
      const id = (await readFile(path, "utf8")).trim();
      if (valid(id)) return id;
      this.log?.warn({ path }, "instance-id file is not a 32-digit hex id; making a new one (a live lease of the old id is refused until it expires)");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
        throw new WeftError("CONFIG_INVALID", `cannot read ${path}: ${(err as Error).message}; check that --state-dir is readable by the agent`, { cause: err });
      }
    }
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const id = randomBytes(16).toString("hex");
    const tmp = `${path}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`;
    await writeFile(tmp, `${id}\n`, { mode: 0o600 });
    await chmod(tmp, 0o600);
    await rename(tmp, path);
    return id;
  }

  async vtepMac(device: string): Promise<string | undefined> {
    const mac = (await this.load()).vtepMacs?.[device];
    return mac && isValidMac(mac) ? mac : undefined;
  }

  /** Writes are read-modify-write: run them one at a time so none is lost. */
  private writes: Promise<unknown> = Promise.resolve();

  saveVtepMac(device: string, mac: string): Promise<void> {
    const p = this.writes.then(() => this.write(device, mac));
    this.writes = p.catch(() => undefined);
    return p;
  }

  private async write(device: string, mac: string): Promise<void> {
    const s = await this.load();
    s.vtepMacs = { ...(s.vtepMacs ?? {}), [device]: mac };
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    // Unique per write: two writers in one process must not share (and rename away) one temp file.
    const tmp = `${this.path}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`;
    await writeFile(tmp, JSON.stringify(s, null, 2) + "\n", { mode: 0o600 });
    await rename(tmp, this.path);
  }
}

/** A random locally administered unicast MAC, as Flannel's pkg/mac. */
export function randomMac(): string {
  const b = randomBytes(6);
  b[0] = (b[0]! & 0xfe) | 0x02;
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join(":");
}
