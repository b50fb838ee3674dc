import { describe, expect, it } from "vitest";
import { parseCidr } from "../../lib/src/cidr.js";
import { Firewall, type Exec } from "../src/firewall/firewall.js";
import { silentLog } from "./helpers/fixtures.js";

const FULL = "table ip weft {\n\tchain postrouting { masquerade }\n}\n";
const FLUSHED = "table ip weft {\n\tchain postrouting { }\n}\n";

/** nft with one table, as the kernel would list it; `onList` may change it while a listing runs. */
function fakeNft() {
  const nft = { table: undefined as string | undefined, calls: [] as string[], onList: undefined as (() => void) | undefined };
  const exec: Exec = async (cmd, args) => {
    nft.calls.push(`${cmd} ${args.join(" ")}`);
    if (cmd !== "nft") return { code: 1, stdout: "", stderr: `${cmd}: not in this test`, missing: true };
    if (args[0] === "-f") nft.table = FULL;
    else if (args[0] === "list") {
      nft.onList?.();
      return nft.table === undefined ? { code: 1, stdout: "", stderr: "No such file or directory", missing: false } : { code: 0, stdout: nft.table, stderr: "", missing: false };
    } else if (args[0] === "delete") nft.table = undefined;
    return { code: 0, stdout: "", stderr: "", missing: false };
  };
  return { nft, exec };
}

describe("Firewall (nftables table)", () => {
  it("puts back a deleted or flushed table, and nothing when all is well", async () => {
    const { nft, exec } = fakeNft();
    const fw = new Firewall({ network: parseCidr("10.244.0.0/16")!, subnet: parseCidr("10.244.1.0/24")!, masquerade: true, forward: false }, silentLog, exec);
    expect(await fw.ensure()).toEqual([]);
    expect(nft.table).toBe(FULL);
    expect(await fw.ensure()).toEqual([]);
    nft.table = undefined;
    expect(await fw.ensure()).toEqual(["nftables"]);
    nft.table = FLUSHED;
    expect(await fw.ensure()).toEqual(["nftables"]);
    expect(nft.table).toBe(FULL);
  });

  it("does not take a change made while a repair is listed back as the table it wants", async () => {
    const { nft, exec } = fakeNft();
    const fw = new Firewall({ network: parseCidr("10.244.0.0/16")!, subnet: parseCidr("10.244.1.0/24")!, masquerade: true, forward: false }, silentLog, exec);
    await fw.ensure();
    nft.table = undefined;
    // Someone flushes the chain right after the repair's `nft -f`, before the agent lists the table.
    let listings = 0;
    nft.onList = () => { if (++listings === 2) nft.table = FLUSHED; };
    expect(await fw.ensure()).toEqual(["nftables"]);
    expect(nft.table).toBe(FLUSHED);
    nft.onList = undefined;
    // The next resync sees the flushed chain as drift and puts it back.
    expect(await fw.ensure()).toEqual(["nftables"]);
    expect(nft.table).toBe(FULL);
  });
});
