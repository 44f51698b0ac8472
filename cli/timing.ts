// CUSTODY_CLI_TIMING=1 prints where a run spent its time (stderr), in
// milliseconds from the process start. No imports: the launcher's cheapest
// commands load it too.
const timing = process.env.CUSTODY_CLI_TIMING === "1";

export function mark(label: string): void {
  if (timing)
    process.stderr.write(`custody: timing: ${performance.now().toFixed(0).padStart(6)} ms  ${label}\n`);
}
