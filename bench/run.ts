/**
 * `make bench`: every benchmark, one after another, printing numbers.
 * Pure benchmarks run anywhere; the operator benchmark needs `make up`.
 */
import { spawnSync } from "node:child_process";
import { join } from "node:path";

const here = import.meta.dirname;
const only = process.argv[2];
const benches: Array<[string, string[]]> = [
  ["mint", [join(here, "mint.ts")]],
  ["provenance", [join(here, "provenance.ts")]],
  ["operator", [join(here, "operator.ts")]],
  ["cascade", [join(here, "cascade.ts")]],
  ["admission", [join(here, "admission.ts")]],
  ["audit", [join(here, "audit.ts")]],
  ["jwt", [join(here, "jwt.ts")]],
  ["policy", [join(here, "policy.ts")]],
];
let failed = 0;
for (const [name, argv] of benches) {
  if (only && only !== name) continue;
  console.log(`\n######## ${name}`);
  const r = spawnSync(process.execPath, argv, { stdio: "inherit" });
  if (r.status !== 0) failed++;
}
process.exit(failed === 0 ? 0 : 1);
