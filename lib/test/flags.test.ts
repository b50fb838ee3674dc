import { describe, expect, it } from "vitest";
import { parseFlags, parseHostPort } from "../src/flags.js";

const spec = {
  listen: { type: "string", default: "0.0.0.0:1", help: "" },
  name: { type: "string", help: "" },
  insecure: { type: "boolean", help: "" },
} as const;

describe("flags", () => {
  it("reads --name value, --name=value and booleans", () => {
    expect(parseFlags(["--name", "a", "--listen=1.2.3.4:5", "--insecure"], spec, "x")).toEqual({ listen: "1.2.3.4:5", name: "a", insecure: true });
    expect(parseFlags([], spec, "x")).toEqual({ listen: "0.0.0.0:1", name: undefined, insecure: false });
  });
  it.each([
    [["--nope"], /unknown flag --nope; run x --help/],
    [["--constructor", "x"], /unknown flag --constructor/],
    [["--toString"], /unknown flag --toString/],
    [["--name"], /--name needs a value/],
    [["--name", "--insecure"], /--name needs a value/],
    [["stray"], /unexpected argument "stray"/],
    [["--insecure=yes"], /--insecure takes no value/],
    [["--name="], /--name is empty/],
  ])("rejects %j clearly", (argv, re) => {
    expect(() => parseFlags(argv, spec, "x")).toThrow(re);
  });
  it("parses HOST:PORT", () => {
    expect(parseHostPort("127.0.0.1:8080", "listen")).toEqual(["127.0.0.1", 8080]);
    expect(parseHostPort("[::1]:80", "listen")).toEqual(["::1", 80]);
    expect(() => parseHostPort("127.0.0.1", "listen")).toThrow(/--listen: "127.0.0.1" is not HOST:PORT/);
    expect(() => parseHostPort("h:99999", "listen")).toThrow(/not HOST:PORT/);
  });
});
