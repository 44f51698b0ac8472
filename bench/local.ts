// What every operator-level bench starts from: `--name value` flags and the
// local environment of `make up` (.local/env, or CUSTODY_ENV_DIR).
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
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

/** CPU seconds (user + system) a process has used so far; NaN when it is gone. */
export function cpuSecondsOf(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
  } catch {
    return Number.NaN;
  }
}

/** The processes of the local environment, from the pid files `make up` writes. */
export function localPids(): Record<string, number | undefined> {
  const pid = (name: string) => {
    try {
      return Number(readFileSync(join(envDir, "pids", `${name}.pid`), "utf8").trim()) || undefined;
    } catch {
      return undefined;
    }
  };
  return { "kube-apiserver": pid("kube-apiserver"), etcd: pid("etcd"), kafka: pid("kafka") };
}

/** Busy and total clock ticks of the whole machine (all cores), from /proc/stat. */
function machineTicks(): { busy: number; total: number } {
  const cpu = readFileSync("/proc/stat", "utf8").split("\n", 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = cpu.reduce((a, b) => a + b, 0);
  const idle = (cpu[3] ?? 0) + (cpu[4] ?? 0); // idle + iowait
  return { busy: total - idle, total };
}

/**
 * Starts counting the CPU each process spends (the local environment's, the
 * named extra ones, and this bench's own) and how busy the whole machine is.
 * The returned function says what each has spent since: CPU seconds
 * ("kube-apiserver 10.3 s, …"), or, given the elapsed seconds, cores busy
 * ("kube-apiserver 1.08, …"); then the machine's share, because on a
 * saturated machine every process's work queues behind every other's.
 */
export function cpuMeter(
  extra: Record<string, number | undefined> = {},
): (elapsedSeconds?: number) => string {
  const pids = { ...localPids(), ...extra };
  const before = Object.fromEntries(Object.entries(pids).map(([k, p]) => [k, cpuSecondsOf(p)]));
  const self = process.cpuUsage();
  const machine0 = machineTicks();
  return (elapsedSeconds) => {
    const own = process.cpuUsage(self);
    const spent: Array<[string, number]> = [
      ...Object.entries(pids).map(([k, p]): [string, number] => [k, cpuSecondsOf(p) - before[k]!]),
      ["this bench", (own.user + own.system) / 1e6],
    ];
    const machine = machineTicks();
    const busy = (machine.busy - machine0.busy) / (machine.total - machine0.total);
    const each = spent.map(([k, s]) =>
      elapsedSeconds === undefined ? `${k} ${s.toFixed(1)} s` : `${k} ${(s / elapsedSeconds).toFixed(2)}`,
    );
    return `${each.join(", ")}; machine ${(busy * 100).toFixed(0)}% busy (${availableParallelism()} cores)`;
  };
}

/**
 * The API server's count of the writes it has served (POST, PUT, PATCH,
 * DELETE; its own `apiserver_request_total`), by verb and resource. Two
 * snapshots around a run say what each task cost it: the number the issue's
 * arithmetic (about 1,100 writes/s per API server) is about.
 */
export async function apiWrites(get: (path: string) => Promise<unknown>): Promise<Map<string, number>> {
  const text = String(await get("/metrics"));
  const counts = new Map<string, number>();
  const line = /^apiserver_request_total\{([^}]*)\} (\S+)$/gm;
  for (const m of text.matchAll(line)) {
    const labels = Object.fromEntries([...m[1]!.matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]));
    if (!["POST", "PUT", "PATCH", "DELETE", "APPLY"].includes(labels.verb ?? "")) continue;
    const key = `${labels.verb} ${labels.resource}${labels.subresource ? `/${labels.subresource}` : ""}`;
    counts.set(key, (counts.get(key) ?? 0) + Number(m[2]));
  }
  return counts;
}

/** "POST agenttasks 1.00, PUT agenttasks/status 1.00, …": writes per unit between two snapshots. */
export function writesPer(before: Map<string, number>, after: Map<string, number>, units: number): string {
  const rows = [...after]
    .map(([key, n]) => [key, (n - (before.get(key) ?? 0)) / units] as const)
    .filter(([, per]) => per >= 0.01)
    .sort((a, b) => b[1] - a[1]);
  const total = rows.reduce((sum, [, per]) => sum + per, 0);
  return `${total.toFixed(2)} (${rows.map(([key, per]) => `${key} ${per.toFixed(2)}`).join(", ")})`;
}
