// What every operator-level bench starts from: `--name value` flags and the
// local environment of `make up` (.local/env, or CUSTODY_ENV_DIR).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { LocalEnv } from "../test/env/local-env.ts";

/** `--name value` pairs after the script name; `flag("rate", 50)` reads a number. */
export function benchFlags(argv = process.argv.slice(2)): (name: string, fallback: number) => number {
  const args = new Map<string, string>();
  for (let i = 0; i < argv.length; i += 2) args.set(argv[i]!.replace(/^--/, ""), argv[i + 1]!);
  return (name, fallback) => Number(args.get(name) ?? fallback);
}

export const envDir = process.env.CUSTODY_ENV_DIR ?? join(import.meta.dirname, "..", ".local", "env");

export function localEnv(): LocalEnv {
  return JSON.parse(readFileSync(join(envDir, "env.json"), "utf8")) as LocalEnv;
}
