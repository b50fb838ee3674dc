// The fan-out bench's --streams-per-connection: its bounds, what it does not
// go with, and the open files a run with it needs (the check that refuses a
// run before it starts).
import { afterEach, describe, expect, it, vi } from "vitest";
import { parseOpts } from "../bench/fanout/options.js";
import { connections, filesNeeded, sourceAddresses, watchersPerProc } from "../bench/fanout/run.js";

/** parseOpts's usage error: the message, with process.exit and the help text kept out. */
function refusal(argv: string[]): string {
  let written = "";
  vi.spyOn(process.stderr, "write").mockImplementation((s) => ((written += String(s)), true));
  vi.spyOn(process, "exit").mockImplementation((code) => {
    throw new Error(`exit ${code}`);
  });
  expect(() => parseOpts(argv)).toThrow("exit 2");
  return written.split("\n")[0]!;
}

afterEach(() => {
  vi.restoreAllMocks();
});

describe("--streams-per-connection", () => {
  it("defaults to a connection per watcher", () => {
    expect(parseOpts([]).streamsPerConnection).toBe(1);
    expect(parseOpts(["--streams-per-connection", "4"]).streamsPerConnection).toBe(4);
    expect(parseOpts(["--streams-per-connection=100"]).streamsPerConnection).toBe(100);
  });

  it.each([["0"], ["101"], ["2.5"], ["four"]])("refuses %s, naming the flag and a value that works", (v) => {
    const msg = refusal(["--streams-per-connection", v]);
    expect(msg).toContain(`--streams-per-connection: "${v}" is not an integer from 1 to 100`);
    expect(msg).toContain("e.g. --streams-per-connection 4");
  });

  it("refuses a missing value", () => {
    expect(refusal(["--streams-per-connection"])).toContain("is not an integer from 1 to 100");
  });

  it("stays with --target weft: etcd watchers keep a connection each", () => {
    expect(refusal(["--target", "etcd", "--streams-per-connection", "2"])).toContain("goes with --target weft");
    expect(parseOpts(["--target", "etcd", "--streams-per-connection", "1"]).streamsPerConnection).toBe(1);
    expect(refusal(["--compare", "--streams-per-connection", "2"])).toContain("does not go with --compare");
  });

  it("keeps a reporting watcher's two streams within the server's 128 per connection", () => {
    expect(parseOpts(["--report-status", "--streams-per-connection", "64"]).streamsPerConnection).toBe(64);
    expect(refusal(["--report-status", "--streams-per-connection", "65"])).toContain("use --streams-per-connection 64 or less");
  });
});

describe("open files with shared connections", () => {
  it("counts connections, not watchers, for the server and for each watcher process", () => {
    const o = { target: "weft" as const, watchers: 50_000, clientProcs: 5, servers: 1, streamsPerConnection: 4 };
    expect(connections(o)).toEqual({ perServer: 12_500, perProc: 2_500 });
    expect(filesNeeded(o)).toBe(12_700);
    // One connection per watcher, as before: 50,000 sockets in the server.
    expect(filesNeeded({ ...o, streamsPerConnection: 1 })).toBe(50_200);
    expect(filesNeeded({ watchers: 1000, clientProcs: 1 })).toBe(1200);
  });

  it("gives each watcher process whole groups, so no connection is split between two", () => {
    expect(watchersPerProc({ watchers: 1000, clientProcs: 3, streamsPerConnection: 4 })).toBe(336);
    expect(connections({ target: "weft", watchers: 1000, clientProcs: 3, streamsPerConnection: 4 })).toEqual({ perServer: 250, perProc: 84 });
  });

  it("needs no extra source addresses while the connections fit one", () => {
    expect(sourceAddresses({ watchers: 50_000, streamsPerConnection: 4 }, 1)).toEqual([]);
    expect(sourceAddresses({ watchers: 50_000 }, 1)).toEqual(["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
  });
});
