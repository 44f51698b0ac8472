import { defineConfig } from "vitest/config";

// Two projects: pure unit tests (no I/O, run anywhere) and integration tests
// against the real local control plane and Kafka that test/env/global-setup.ts
// starts once per run.
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: "unit",
          include: ["test/unit/**/*.test.ts"],
          setupFiles: ["test/setup-reflect.ts"],
        },
      },
      {
        test: {
          name: "integration",
          include: ["test/integration/**/*.test.ts"],
          setupFiles: ["test/setup-reflect.ts"],
          globalSetup: ["test/env/global-setup.ts"],
          testTimeout: 60_000,
          hookTimeout: 120_000,
          // One shared control plane: files run one at a time so that tests
          // measuring the cluster do not contend with each other.
          fileParallelism: false,
        },
      },
    ],
  },
});
