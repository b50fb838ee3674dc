// Runs a NetlinkDataplane inside a namespace (started under `ip netns exec`)
// and serves its methods over stdin/stdout JSON lines, so a test in the root
// namespace can drive the real kernel without switching namespaces itself.
// Methods: any Dataplane method by name; table operations as "routes.put",
// "neighbours:7.list", "fdb:7.remove", and "routes.stale" (the listed routes
// the table marks as not in the form its put makes), "routes.removeListed"; "watch" streams kernel changes as
// {"change": ...} lines; "block" keeps the event loop busy for args[0] ms;
// "mute"/"unmute" bracket muteObjectChanges(). argv[2], if given and not 0, is the notification
// socket's receive buffer in bytes; argv[3] "plain" makes routes without nexthop objects.
import { createInterface } from "node:readline";
import type { KernelTable } from "../../src/dataplane/dataplane.js";
import { NetlinkDataplane } from "../../src/dataplane/netlink-dataplane.js";

const monitorBufferBytes = Number(process.argv[2]) || undefined;
const dp = new NetlinkDataplane({ monitorBufferBytes, ...(process.argv[3] === "plain" ? { nexthops: false } : {}) });
const out = (v: unknown) => process.stdout.write(JSON.stringify(v) + "\n");
let unmute: (() => void) | undefined;

function table(spec: string): KernelTable<unknown> {
  const [name, index] = spec.split(":");
  if (name === "routes") return dp.routes as KernelTable<unknown>;
  if (name === "neighbours") return dp.neighbours(Number(index)) as KernelTable<unknown>;
  if (name === "fdb") return dp.fdb(Number(index)) as KernelTable<unknown>;
  throw new Error(`no table ${spec}`);
}

const rl = createInterface({ input: process.stdin });
rl.on("line", async (line) => {
  const { id, method, args } = JSON.parse(line) as { id: number; method: string; args: unknown[] };
  try {
    let result: unknown;
    if (method === "block") {
      // Keeps the event loop busy, as a long synchronous pass would: notifications pile up unread.
      const end = Date.now() + Number(args[0]);
      while (Date.now() < end) { /* busy */ }
    } else if (method === "mute") {
      unmute = dp.muteObjectChanges();
    } else if (method === "unmute") {
      unmute?.();
    } else if (method === "watch") {
      dp.watch((change) => out({ change }));
    } else if (method.includes(".")) {
      const [spec, op] = method.split(".");
      const t = table(spec!);
      const fn = (t as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[op!];
      if (op === "removeListed") {
        // Removes what the table lists, as the objects it listed (a stale one carries what goes with it).
        result = await t.removeMany!(await t.list());
      } else if (op === "stale") {
        // The dsts of listed objects that are not the same as a plain copy of themselves: the table marked them stale.
        result = (await t.list()).filter((o) => !t.same!(o, { ...(o as object) })).map((o) => (o as { dst: string }).dst);
      } else if (op === "scan") {
        // What the table handed over one by one, as a list (a restarted reading starts it again).
        const got: unknown[] = [];
        await t.scan!((o) => got.push(o), () => { got.length = 0; });
        result = got;
      } else result = await fn!.apply(t, args);
      // putMany/removeMany answer one error or undefined per object.
      if (op!.endsWith("Many")) result = (result as unknown[]).map((e) => (e ? { message: (e as Error).message, code: (e as { code?: string }).code } : null));
    } else {
      const fn = (dp as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[method];
      if (typeof fn !== "function") throw new Error(`no method ${method}`);
      result = await fn.apply(dp, args);
    }
    out({ id, result: result ?? null });
  } catch (err) {
    const e = err as Error & { code?: string };
    out({ id, error: { message: e.message, code: e.code } });
  }
});
rl.on("close", () => { dp.close(); process.exit(0); });
out({ ready: true });
