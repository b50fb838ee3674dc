// Reports what this node has applied to the lease server (ReportStatus), so
// operators see per-node convergence and health on the server (GET /v1/nodes,
// weftctl nodes, /ui/). One stream, kept open while the agent runs: the server
// counts an open stream as connected. A report goes out when what it says
// changes (coalesced to one per tick) and as a heartbeat every heartbeatMs.
// Losing the stream changes nothing on this node; it is reopened with back-off,
// and an older server without ReportStatus is asked again only every 5 minutes.
import { isWeftError } from "../../lib/src/errors.js";
import type { Logger } from "../../lib/src/logger.js";
import { backoffDelay, sleep } from "./backoff.js";
import type { StatusReport, StatusStream } from "./lease-client.js";
import { MAX_PROBLEMS, MAX_PROBLEM_CHARS } from "../../lib/src/node-status.js";

export const HEARTBEAT_MS = 10_000;
const UNSUPPORTED_RETRY_MS = 300_000;

export interface StatusReporterDeps {
  readonly open: () => StatusStream;
  readonly status: () => StatusReport;
  readonly log: Logger;
  readonly signal: AbortSignal;
  readonly heartbeatMs?: number;
}

export class StatusReporter {
  #stream: StatusStream | undefined;
  #last = "";
  #scheduled = false;

  constructor(private readonly deps: StatusReporterDeps) {}

  /** Runs until the signal aborts. */
  async run(): Promise<void> {
    const { log, signal } = this.deps;
    let attempt = 0;
    let warnedUnsupported = false;
    while (!signal.aborted) {
      const stream = this.deps.open();
      const opened = performance.now();
      const onAbort = () => stream.close();
      signal.addEventListener("abort", onAbort, { once: true });
      this.#stream = stream;
      this.#send(true);
      const heartbeat = setInterval(() => this.#send(true), this.deps.heartbeatMs ?? HEARTBEAT_MS);
      let delay: number;
      // A stream that ran for a while was a success: the back-off starts over.
      const settled = () => { if (performance.now() - opened > 30_000) attempt = 0; };
      try {
        await stream.done;
        settled();
        delay = backoffDelay(attempt++, 1000, 30_000);
      } catch (err) {
        settled();
        if (isWeftError(err, "NOT_SUPPORTED")) {
          if (!warnedUnsupported) log.info({ err: (err as Error).message }, "the lease server takes no status reports (an older version); this node's convergence is not shown there");
          warnedUnsupported = true;
          delay = UNSUPPORTED_RETRY_MS;
        } else {
          // INVALID_ARGUMENT or PERMISSION_DENIED would repeat on every retry: say it once per back-off step.
          log.warn({ err: (err as Error).message }, "status report stream broke; reopening");
          delay = backoffDelay(attempt++, 1000, 30_000);
        }
      } finally {
        clearInterval(heartbeat);
        signal.removeEventListener("abort", onAbort);
        this.#stream = undefined;
      }
      await sleep(delay, signal);
    }
  }

  /** What the report says may have changed: sent once at the end of this tick if it did. */
  changed(): void {
    if (this.#scheduled || !this.#stream) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      this.#send(false);
    });
  }

  #send(force: boolean): void {
    const stream = this.#stream;
    if (!stream) return;
    const s = this.deps.status();
    const report: StatusReport = { ...s, problems: s.problems.slice(0, MAX_PROBLEMS).map((p) => (p.length > MAX_PROBLEM_CHARS ? `${p.slice(0, MAX_PROBLEM_CHARS - 3)}...` : p)) };
    const key = JSON.stringify(report);
    if (!force && key === this.#last) return;
    this.#last = key;
    stream.send(report);
  }
}
