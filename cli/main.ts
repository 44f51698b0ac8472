// The Custody CLI (`bin/custody`, also the kubectl plugin `kubectl-custody`).
// Configured like kubectl: KUBECONFIG (or --kubeconfig), --context, -n.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { AgentTask } from "../core/api/v1alpha1.ts";
import { loadClusterCredentials } from "../shells/kube/credentials.ts";
import { KubeRest } from "../shells/kube/rest.ts";

const USAGE = `custody — workload identity and provenance for AI agents

usage:
  custody status [NAME] [-n NAMESPACE | -A] [-o table|json]   tasks, their phase, identity and certificate
  custody version                                            client version
  custody help

flags: --kubeconfig PATH, --context NAME (else KUBECONFIG / ~/.kube/config / in-cluster)
`;

interface Flags {
  namespace?: string;
  allNamespaces: boolean;
  output: "table" | "json";
  kubeconfig?: string;
  context?: string;
  positional: string[];
}

export function parseFlags(argv: string[]): Flags {
  const flags: Flags = { allNamespaces: false, output: "table", positional: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new UsageError(`${a}: needs a value`);
      return v;
    };
    if (a === "-n" || a === "--namespace") flags.namespace = value();
    else if (a === "-A" || a === "--all-namespaces") flags.allNamespaces = true;
    else if (a === "-o" || a === "--output") {
      const o = value();
      if (o !== "table" && o !== "json")
        throw new UsageError(`-o: must be table or json, got ${JSON.stringify(o)}`);
      flags.output = o;
    } else if (a === "--kubeconfig") flags.kubeconfig = value();
    else if (a === "--context") flags.context = value();
    else if (a.startsWith("-")) throw new UsageError(`unknown flag ${a}`);
    else flags.positional.push(a);
  }
  return flags;
}

class UsageError extends Error {}

function version(): string {
  const pkg = JSON.parse(readFileSync(join(import.meta.dirname, "..", "package.json"), "utf8")) as {
    version: string;
  };
  return `custody ${pkg.version}`;
}

function currentNamespace(kubeconfigNamespace: string | undefined, flags: Flags): string {
  return flags.namespace ?? kubeconfigNamespace ?? "default";
}

async function status(flags: Flags): Promise<number> {
  const creds = loadClusterCredentials({
    ...(flags.kubeconfig ? { kubeconfig: flags.kubeconfig } : {}),
    ...(flags.context ? { context: flags.context } : {}),
  });
  const rest = new KubeRest(creds, { connections: 1 });
  try {
    const ns = currentNamespace(creds.namespace, flags);
    const base = flags.allNamespaces
      ? "/apis/custody.dev/v1alpha1/agenttasks"
      : `/apis/custody.dev/v1alpha1/namespaces/${encodeURIComponent(ns)}/agenttasks`;
    const name = flags.positional[0];
    const tasks =
      name !== undefined
        ? [await rest.get<AgentTask>(`${base}/${encodeURIComponent(name)}`)]
        : (await rest.get<{ items: AgentTask[] }>(base)).items;
    if (flags.output === "json") {
      process.stdout.write(`${JSON.stringify(tasks.map(summary), null, 2)}\n`);
      return 0;
    }
    const rows = tasks.map((t) => {
      const s = summary(t);
      return [s.namespace, s.name, s.phase, s.delegator, s.spiffeID, s.expires, s.reason];
    });
    printTable(["NAMESPACE", "NAME", "PHASE", "DELEGATOR", "SPIFFE-ID", "EXPIRES", "REASON"], rows);
    return 0;
  } finally {
    rest.close();
  }
}

function summary(t: AgentTask) {
  const ready = t.status?.conditions?.find((c) => c.type === "Ready");
  return {
    namespace: t.metadata.namespace ?? "",
    name: t.metadata.name,
    phase: t.status?.phase ?? "Pending",
    delegator: t.status?.delegator?.name ?? "",
    spiffeID: t.status?.spiffeID ?? "",
    expires: t.status?.certificate?.notAfter ?? "",
    serial: t.status?.certificate?.serial ?? "",
    reason: ready?.reason ?? "",
    message: ready?.message ?? "",
    parent: t.spec?.parentRef?.name ?? "",
    scope: t.spec?.scope ?? [],
  };
}

function printTable(header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i]!))
      .join("   ")
      .trimEnd();
  process.stdout.write(`${[line(header), ...rows.map(line)].join("\n")}\n`);
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case undefined:
    case "help":
    case "--help":
    case "-h":
      process.stdout.write(USAGE);
      return 0;
    case "version":
    case "--version":
      process.stdout.write(`${version()}\n`);
      return 0;
    case "status":
      return status(parseFlags(rest));
    default:
      process.stderr.write(`custody: unknown command ${JSON.stringify(command)}\n\n${USAGE}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`custody: ${message}\n`);
    process.exit(err instanceof UsageError ? 2 : 1);
  },
);
