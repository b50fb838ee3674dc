// The status reporter over a scripted stream: first report at once, changes coalesced,
// heartbeats, a broken stream reopened, an older server asked again only rarely.
import { describe, expect, it } from "vitest";
import { WeftError } from "../../lib/src/errors.js";
import type { StatusReport, StatusStream } from "../src/lease-client.js";
import { StatusReporter } from "../src/status-reporter.js";
import { memoryLogger } from "../../lease-server/test/helpers.js";

class Streams {
  opened: { sent: StatusReport[]; end: (err?: Error) => void; closed: boolean }[] = [];
  open = (): StatusStream => {
    let end!: (err?: Error) => void;
    const done = new Promise<void>((resolve, reject) => (end = (err) => (err ? reject(err) : resolve())));
    const s = { sent: [] as StatusReport[], end, closed: false };
    this.opened.push(s);
    return { send: (r) => s.sent.push(r), close: () => { s.closed = true; end(); }, done };
  };
}

const base: StatusReport = { nodeName: "node-1", appliedRevision: 1, healthy: true, problems: [], backend: "vxlan", version: "0.1.0", peers: 0, subnet: "10.244.1.0/24" };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("StatusReporter", () => {
  it("reports at once, coalesces changes, skips unchanged ones, beats, and bounds problems", async () => {
    const streams = new Streams();
    let status = base;
    const ac = new AbortController();
    const r = new StatusReporter({ open: streams.open, status: () => status, log: memoryLogger().log, signal: ac.signal, heartbeatMs: 150 });
    const running = r.run();
    expect(streams.opened[0]!.sent).toEqual([base]);
    status = { ...base, appliedRevision: 2 };
    r.changed();
    status = { ...base, appliedRevision: 3, problems: Array.from({ length: 12 }, (_, i) => `${i}`.padEnd(300, "x")) };
    r.changed();
    r.changed();
    await sleep(5);
    const sent = streams.opened[0]!.sent;
    expect(sent.map((s) => s.appliedRevision)).toEqual([1, 3]);
    expect(sent[1]!.problems).toHaveLength(8);
    expect(sent[1]!.problems[0]).toHaveLength(200);
    r.changed();
    await sleep(5);
    expect(sent).toHaveLength(2);
    await sleep(200);
    expect(sent.length).toBeGreaterThanOrEqual(3);
    expect(sent.at(-1)!.appliedRevision).toBe(3);
    ac.abort();
    await running;
    expect(streams.opened[0]!.closed).toBe(true);
  });

  it("reopens a broken stream with back-off, and asks a server without ReportStatus again only after minutes", async () => {
    const streams = new Streams();
    const ac = new AbortController();
    const { log, lines } = memoryLogger();
    const r = new StatusReporter({ open: streams.open, status: () => base, log, signal: ac.signal });
    const running = r.run();
    streams.opened[0]!.end(new WeftError("SERVER_UNAVAILABLE", "report status (lease server x): connection reset"));
    await sleep(1500);
    expect(streams.opened).toHaveLength(2);
    expect(streams.opened[1]!.sent).toEqual([base]);
    expect(lines.some((l) => l.msg === "status report stream broke; reopening")).toBe(true);
    streams.opened[1]!.end(new WeftError("NOT_SUPPORTED", "report status (lease server x): unimplemented"));
    await sleep(1500);
    expect(streams.opened).toHaveLength(2);
    expect(lines.some((l) => String(l.msg).startsWith("the lease server takes no status reports"))).toBe(true);
    ac.abort();
    await running;
  });
});
