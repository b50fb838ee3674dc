// Runs a NetlinkDataplane inside a namespace (started under `ip netns exec`)
// and serves its methods over stdin/stdout JSON lines, so a test in the root
// namespace can drive the real kernel without switching namespaces itself.
import { createInterface } from "node:readline";
import { NetlinkDataplane } from "../../src/dataplane/netlink-dataplane.js";

const dp = new NetlinkDataplane();
const rl = createInterface({ input: process.stdin });
rl.on("line", async (line) => {
  const { id, method, args } = JSON.parse(line) as { id: number; method: string; args: unknown[] };
  try {
    const fn = (dp as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[method];
    if (typeof fn !== "function") throw new Error(`no method ${method}`);
    const result = await fn.apply(dp, args);
    process.stdout.write(JSON.stringify({ id, result: result ?? null }) + "\n");
  } catch (err) {
    const e = err as Error & { code?: string };
    process.stdout.write(JSON.stringify({ id, error: { message: e.message, code: e.code } }) + "\n");
  }
});
rl.on("close", () => { dp.close(); process.exit(0); });
process.stdout.write(JSON.stringify({ ready: true }) + "\n");
