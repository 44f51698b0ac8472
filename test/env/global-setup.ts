// Vitest global setup for integration tests: starts the real local
// environment (etcd, kube-apiserver, kube-controller-manager, Kafka) once per
// run in a throwaway state folder and stops it afterwards. With
// CUSTODY_TEST_ENV_DIR pointing at an environment that is already up (for
// example `.local/env` after `make up`), that one is reused and left running.
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { TestProject } from "vitest/node";
import type { LocalEnv } from "./local-env.ts";

const here = import.meta.dirname;

export default function setup(project: TestProject): () => void {
  const reuse = process.env.CUSTODY_TEST_ENV_DIR;
  let stateDir: string;
  let owned = false;
  if (reuse && existsSync(join(reuse, "env.json"))) {
    stateDir = resolve(reuse);
    execFileSync(join(here, "status.sh"), [stateDir], { stdio: "ignore" });
  } else {
    stateDir = mkdtempSync(join(tmpdir(), "custody-test-env-"));
    owned = true;
    const started = Date.now();
    execFileSync(join(here, "up.sh"), [stateDir, join(stateDir, "env.sh")], { stdio: "inherit" });
    console.log(`[custody-env] test environment up in ${Date.now() - started} ms`);
  }
  const env = JSON.parse(readFileSync(join(stateDir, "env.json"), "utf8")) as LocalEnv;
  process.env.KUBECONFIG = env.kubeconfig;
  process.env.CUSTODY_KAFKA_BROKERS = env.kafkaBrokers;
  process.env.CUSTODY_ENV_DIR = env.stateDir;
  project.provide("localEnv", env);
  return () => {
    if (!owned) return;
    execFileSync(join(here, "down.sh"), [stateDir], { stdio: "inherit" });
    rmSync(stateDir, { recursive: true, force: true });
  };
}

declare module "vitest" {
  export interface ProvidedContext {
    localEnv: LocalEnv;
  }
}
