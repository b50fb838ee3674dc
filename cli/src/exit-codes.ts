// weftctl's exit codes, the part of its interface scripts depend on; they are
// listed in --help and the README. Every failure leaves as one CliError, so
// main.ts is the one place that prints a message and picks the code.

export const EXIT = {
  OK: 0,
  /** The server (or agent) answered with an error: its RFC 9457 problem is printed. */
  SERVER_ERROR: 1,
  /** A bad flag or argument, or missing credentials: nothing was sent. */
  USAGE: 2,
  /** No answer: connection refused, timeout, DNS or TLS failure. */
  UNREACHABLE: 3,
  /** `nodes --check` / `--wait-converged`: some node has not converged. */
  NOT_CONVERGED: 4,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

export const EXIT_CODES_HELP = `Exit codes:
  0  success
  1  the server answered with an error (its detail and code are printed on stderr)
  2  usage error: a bad flag or argument, or missing admin credentials (nothing was sent)
  3  the server cannot be reached (connection refused, timeout, DNS or TLS failure)
  4  nodes --check / --wait-converged: some node is not converged`;

export class CliError extends Error {
  constructor(readonly exitCode: ExitCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "CliError";
  }
}

export const usage = (message: string) => new CliError(EXIT.USAGE, message);
