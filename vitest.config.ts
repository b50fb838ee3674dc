import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["lib/test/**/*.test.ts", "lease-server/test/**/*.test.ts", "node-agent/test/**/*.test.ts", "cli/test/**/*.test.ts", "test/**/*.test.ts"],
    exclude: ["node_modules/**", "dist/**"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Kernel and process tests share namespaces, ports and CPU on a 2-core box.
    fileParallelism: false,
    reporters: ["default", "json"],
    outputFile: { json: ".vitest-results.json" },
  },
});
