// Runs a daemon's main() from TypeScript sources: run-main.ts <path/to/main.ts> [flags...]
const [mod, ...args] = process.argv.slice(2);
const m = (await import(new URL(mod!, `file://${process.cwd()}/`).href)) as { main(argv: string[]): Promise<void> };
await m.main(args);
