// What test/env/up.sh writes to env.json, and helpers for tests to reach the
// local environment as the admin or as one of the ordinary users.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { KubeConfig } from "@kubernetes/client-node";

export interface LocalEnv {
  stateDir: string;
  binDir: string;
  kubeconfig: string;
  apiServer: string;
  etcd: string;
  kafkaBrokers: string;
  kafkaControllerPort: number;
  pki: string;
  users: string[];
}

/** A KubeConfig for the admin (system:masters) or for one of the test users. */
export function kubeConfigFor(
  env: LocalEnv,
  user: "admin" | "alice" | "bob" | "mallory" = "admin",
): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromFile(env.kubeconfig);
  kc.setCurrentContext(user);
  return kc;
}

export function readPki(env: LocalEnv, file: string): string {
  return readFileSync(join(env.pki, file), "utf8");
}
