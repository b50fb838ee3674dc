// weftctl entry point: the one place that turns failures into a message on
// stderr (one line, no stack trace) and an exit code (exit-codes.ts).
import { CommanderError } from "commander";
import { CliError, EXIT } from "./exit-codes.js";
import { BIN, buildProgram } from "./program.js";

export async function main(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  // `weftctl leases | head -1`: the reader left; that is not an error worth a stack trace.
  process.stdout.on("error", (e: NodeJS.ErrnoException) => {
    if (e.code === "EPIPE") process.exit(EXIT.OK);
    throw e;
  });
  const err = (s: string) => void process.stderr.write(s);
  const program = buildProgram({ out: (s) => void process.stdout.write(s), err, env, now: Date.now });
  try {
    await program.parseAsync(argv, { from: "user" });
    return EXIT.OK;
  } catch (e) {
    if (e instanceof CliError) {
      err(`${BIN}: ${e.message}\n`);
      return e.exitCode;
    }
    if (e instanceof CommanderError) {
      // commander printed its message already; --help and --version are successes.
      if (e.code === "commander.helpDisplayed" || e.code === "commander.version" || e.exitCode === 0) return EXIT.OK;
      return EXIT.USAGE;
    }
    err(`${BIN}: unexpected error: ${e instanceof Error ? e.message : String(e)}\n`);
    return EXIT.SERVER_ERROR;
  }
}
