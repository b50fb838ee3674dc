// Masquerade and forward rules, reconciled like every other kernel object.
//
// nftables: the table `ip weft` (nft-rules.ts) is weft's alone. It is
// replaced in one transaction, listed back, and compared with that listing on
// every resync: a flushed, deleted or edited table is put back whole.
//
// iptables: an nftables `accept` only ends its own chain. A packet accepted
// by weft's forward chain still meets every other forward hook, and Docker
// (and many hosts) set the iptables FORWARD policy to DROP, which would drop
// pod traffic regardless. Only a rule inside that chain can let it through,
// so where the `iptables` command exists weft keeps two ACCEPT rules for the
// cluster network at the top of FORWARD (Flannel's FLANNEL-FWD), marked with
// a comment and removed by --cleanup.
import { execFile } from "node:child_process";
import { formatCidr } from "../../../lib/src/cidr.js";
import { WeftError } from "../../../lib/src/errors.js";
import type { Logger } from "../../../lib/src/logger.js";
import { replaceScript, TABLE, type RuleOptions } from "./nft-rules.js";

const COMMENT = "weft: cluster traffic";
const TIMEOUT_MS = 10_000;

export interface Run { code: number; stdout: string; stderr: string; missing: boolean }

/** Runs a command to its end (nft, iptables); unit tests pass a fake, since they run in the root namespace. */
export type Exec = (cmd: string, args: readonly string[], input?: string) => Promise<Run>;

const run: Exec = (cmd, args, input) => {
  return new Promise((resolve) => {
    const p = execFile(cmd, args, { timeout: TIMEOUT_MS, maxBuffer: 4 << 20 }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: string | number }) | null;
      resolve({ code: e ? (typeof e.code === "number" ? e.code : -1) : 0, stdout, stderr, missing: e?.code === "ENOENT" });
    });
    p.stdin?.on("error", () => { /* the command may exit without reading */ });
    p.stdin?.end(input);
  });
};

export type FirewallOptions = Omit<RuleOptions, "fullyRandom">;

/** The agent's seam to the host firewall (a fake in unit tests: they run in the root namespace). */
export interface RuleSet {
  /** Fails, naming the fix, when the rules asked for cannot be installed at all. */
  check(): Promise<void>;
  /** Puts the rules in place if missing or changed; returns what it repaired. */
  ensure(): Promise<string[]>;
}

export class Firewall implements RuleSet {
  /**
   * `nft list table` right after our first apply: any difference later is drift. Repairs do not
   * replace it: a change made between a repair and its listing (another tool, an operator) would
   * become the standard, and never be repaired.
   */
  private applied: string | undefined;
  private fullyRandom = true;
  private warnedNoNft = false;
  private forwardApplied = false;
  private started = false;

  constructor(private readonly o: FirewallOptions, private readonly log: Logger, private readonly exec: Exec = run) {}

  private get wantsTable(): boolean {
    return this.o.masquerade || this.o.forward;
  }

  /** Fails at start-up, with the fix, when --ip-masq cannot be honoured. */
  async check(): Promise<void> {
    if (!this.o.masquerade) return;
    const r = await this.exec("nft", ["--version"]);
    if (r.missing) throw new WeftError("CONFIG_INVALID", "--ip-masq needs the nft command to install its masquerade rules; install nftables (apt-get install nftables) or drop --ip-masq");
  }

  /**
   * Puts the rules in place if they are missing or changed; returns what it repaired (empty on the
   * first apply or when all was well). Rules of a feature that is off now (a restart without
   * --ip-masq or with --forward-rules=false) are removed on the first call.
   */
  async ensure(): Promise<string[]> {
    const first = !this.started;
    this.started = true;
    const fixed: string[] = [];
    if (this.wantsTable) {
      if (await this.ensureTable()) fixed.push("nftables");
    } else if (first) {
      await removeTable(this.log, this.exec);
    }
    if (this.o.forward) {
      if (await this.ensureForwardAccept()) fixed.push("iptables");
    } else if (first) {
      await removeForwardRules(this.log, this.exec);
    }
    return fixed;
  }

  private async ensureTable(): Promise<boolean> {
    const list = await this.exec("nft", ["list", "table", "ip", TABLE]);
    if (list.missing) {
      if (this.o.masquerade) throw new WeftError("DATAPLANE_OP_FAILED", "nft is no longer installed; masquerade rules cannot be kept (apt-get install nftables)");
      if (!this.warnedNoNft) this.log.warn("nft not found: forward accept rules are not installed in nftables (apt-get install nftables)");
      this.warnedNoNft = true;
      return false;
    }
    if (this.applied !== undefined && list.code === 0 && list.stdout === this.applied) return false;
    const first = this.applied === undefined;
    await this.apply();
    if (!first) this.log.warn({ table: `ip ${TABLE}` }, "nftables table was changed or removed; replaced it");
    return !first;
  }

  private async apply(): Promise<void> {
    let r = await this.exec("nft", ["-f", "-"], replaceScript({ ...this.o, fullyRandom: this.fullyRandom }));
    if (r.code !== 0 && this.fullyRandom && /fully-random|random/i.test(r.stderr)) {
      this.log.warn({ err: r.stderr.trim() }, "masquerade fully-random not supported here; using plain masquerade");
      this.fullyRandom = false;
      r = await this.exec("nft", ["-f", "-"], replaceScript({ ...this.o, fullyRandom: false }));
    }
    if (r.code !== 0) throw new WeftError("DATAPLANE_OP_FAILED", `nft could not install table ip ${TABLE}: ${r.stderr.trim() || `exit ${r.code}`}`);
    const list = await this.exec("nft", ["list", "table", "ip", TABLE]);
    if (list.code !== 0) throw new WeftError("DATAPLANE_OP_FAILED", `nft list table ip ${TABLE} failed after installing it: ${list.stderr.trim()}`);
    this.applied ??= list.stdout;
    this.log.info({ table: `ip ${TABLE}`, masquerade: this.o.masquerade, forward: this.o.forward }, "nftables rules installed");
  }

  private forwardRules(): string[][] {
    const net = formatCidr(this.o.network);
    return [["-s", net], ["-d", net]].map((m) => [...m, "-m", "comment", "--comment", COMMENT, "-j", "ACCEPT"]);
  }

  /** Keeps the FORWARD accept rules; true if it had to (re)insert any. */
  private async ensureForwardAccept(): Promise<boolean> {
    const listed = await this.exec("iptables", ["-w", "5", "-S", "FORWARD"]);
    if (listed.missing) return false;
    if (listed.code !== 0) throw new WeftError("DATAPLANE_OP_FAILED", `iptables -S FORWARD failed: ${listed.stderr.trim()}`);
    const lines = listed.stdout.split("\n");
    const ours = lines.filter((l) => l.includes(`"${COMMENT}"`));
    const want = this.forwardRules();
    const wantLines = want.map((r) => `-A FORWARD ${r.map((w) => (w.includes(" ") ? `"${w}"` : w)).join(" ")}`);
    for (const l of ours) {
      if (wantLines.includes(l)) continue;
      // A rule for an old cluster network: drop it.
      await iptables(this.exec, ["-D", ...splitRule(l).slice(1)]);
    }
    let inserted = false;
    for (const [i, r] of want.entries()) {
      if (ours.includes(wantLines[i]!)) continue;
      await iptables(this.exec, ["-I", "FORWARD", "1", ...r]);
      inserted = true;
    }
    const first = !this.forwardApplied;
    this.forwardApplied = true;
    if (!inserted) return false;
    if (first) this.log.info({ chain: "FORWARD", network: formatCidr(this.o.network) }, "iptables forward accept rules installed");
    else this.log.warn({ chain: "FORWARD" }, "iptables forward accept rules were removed; put them back");
    return !first;
  }

  /** Removes every firewall rule weft made (for --cleanup); absent ones are fine. */
  static async removeAll(log: Logger): Promise<void> {
    await removeTable(log, run);
    await removeForwardRules(log, run);
  }
}

async function removeTable(log: Logger, exec: Exec): Promise<void> {
  const del = await exec("nft", ["delete", "table", "ip", TABLE]);
  if (del.code === 0) log.info({ table: `ip ${TABLE}` }, "removed nftables table");
}

async function removeForwardRules(log: Logger, exec: Exec): Promise<void> {
  const listed = await exec("iptables", ["-w", "5", "-S", "FORWARD"]);
  if (listed.code !== 0) return;
  for (const l of listed.stdout.split("\n").filter((x) => x.includes(`"${COMMENT}"`))) {
    await iptables(exec, ["-D", ...splitRule(l).slice(1)]);
    log.info({ rule: l }, "removed iptables rule");
  }
}

async function iptables(exec: Exec, args: string[]): Promise<void> {
  const r = await exec("iptables", ["-w", "5", ...args]);
  if (r.code !== 0) throw new WeftError("DATAPLANE_OP_FAILED", `iptables ${args.join(" ")} failed: ${r.stderr.trim() || `exit ${r.code}`}`);
}

/** Splits an `iptables -S` line into words, keeping quoted comments whole. */
function splitRule(line: string): string[] {
  return [...line.matchAll(/"([^"]*)"|(\S+)/g)].map((m) => m[1] ?? m[2]!);
}
