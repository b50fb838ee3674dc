// Files that must never be seen half-written (keys, certificates): written to
// a temp file in the same directory, flushed, then renamed over the target,
// and the directory flushed so the rename itself survives a power loss.
import { randomBytes } from "node:crypto";
import { open, rename, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

export async function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o600): Promise<void> {
  const dir = dirname(path);
  // Unique per write: two writers must not share (and rename away) one temp file.
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
  const f = await open(tmp, "wx", mode);
  try {
    await f.writeFile(data);
    // The mode argument is filtered by the umask; keys must end up exactly 0600.
    await f.chmod(mode);
    await f.sync();
  } catch (err) {
    await f.close();
    await rm(tmp, { force: true });
    throw err;
  }
  await f.close();
  try {
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  const d = await open(dir, "r");
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}
