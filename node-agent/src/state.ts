// What must survive an agent restart but not live in the kernel: the VTEP MAC
// (peers' FDB entries point at it, so a new one would break traffic until they
// all catch up). Stored as JSON in the state dir, written atomically.
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { isValidMac } from "../../lib/src/lease.js";

interface StateFile { vtepMacs?: Record<string, string> }

export class AgentState {
  constructor(private readonly dir: string) {}

  private get path(): string {
    return join(this.dir, "agent-state.json");
  }

  private async load(): Promise<StateFile> {
    try {
      return JSON.parse(await readFile(this.path, "utf8")) as StateFile;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return {};
      // A corrupt file must not stop the agent; the device's current MAC is adopted instead.
      return {};
    }
  }

  async vtepMac(device: string): Promise<string | undefined> {
    const mac = (await this.load()).vtepMacs?.[device];
    return mac && isValidMac(mac) ? mac : undefined;
  }

  async saveVtepMac(device: string, mac: string): Promise<void> {
    const s = await this.load();
    s.vtepMacs = { ...(s.vtepMacs ?? {}), [device]: mac };
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const tmp = `${this.path}.${process.pid}.tmp`;
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
