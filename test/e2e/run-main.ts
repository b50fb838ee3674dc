// Runs a daemon's main() from TypeScript sources: run-main.ts <path/to/main.ts> [flags...]
// Like bin/*: an unexpected failure prints its message (no stack) and exits 1.
const [mod, ...args] = process.argv.slice(2);
try {
  const m = (await import(new URL(mod!, `file://${process.cwd()}/`).href)) as { main(argv: string[]): Promise<void> };
  await m.main(args);
} catch (err) {
  process.stderr.write(`${mod}: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
}
