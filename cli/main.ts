// The Custody CLI (`bin/custody`, also the kubectl plugin `kubectl-custody`).
// Configured like kubectl: KUBECONFIG (or --kubeconfig), --context, -n.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { AgentTask } from "../core/api/v1alpha1.ts";
import { loadClusterCredentials } from "../shells/kube/credentials.ts";
import { KubeRest } from "../shells/kube/rest.ts";
import { bool, type FlagDef, KUBE_FLAGS, parseArgs, str, UsageError } from "./flags.ts";
import { mark } from "./timing.ts";

const USAGE = `custody — workload identity and provenance for AI agents

usage:
  custody status [NAME] [-n NAMESPACE | -A] [-o table|json]   tasks, their phase, identity and certificate
  custody tree [TASK] [-n NAMESPACE | -A] [-o text|json]     the delegation tree of a namespace, or of one task
                                                             (its ancestors up to the principal, its sub-agents)
  custody audit (TASK | --pod NAME | --serial HEX | --spiffe-id ID) [-n NAMESPACE] [-o text|json]
                                                             what a task was allowed to do, what it did,
                                                             under whose authority (from the provenance stream)
  custody verify [--topic TOPIC] [--keys FILE] [--checkpoint FILE|JSON] [-o text|json]
                                                             check the provenance stream: hashes, signatures,
                                                             order, gaps, forks, checkpoints (exit 1 on findings)
  custody version                                            client version
  custody help [COMMAND]

flags: --kubeconfig PATH, --context NAME (else KUBECONFIG / ~/.kube/config / in-cluster)
       --brokers HOST:PORT,... (else CUSTODY_KAFKA_BROKERS), --topic TOPIC (else CUSTODY_KAFKA_TOPIC)
`;

const STATUS_USAGE = `usage: custody status [NAME] [-n NAMESPACE | -A] [-o table|json]

Lists AgentTasks (or shows one) with their phase, delegator, SPIFFE ID and
certificate expiry, from the cluster.

flags:
  -n, --namespace NS         namespace (default: the kubeconfig context's, else default)
  -A, --all-namespaces       every namespace
  -o, --output table|json    output format (default table)
  --kubeconfig PATH, --context NAME
`;

const STATUS_FLAGS: readonly FlagDef[] = [
  ...KUBE_FLAGS,
  { names: ["-n", "--namespace"], key: "namespace", kind: "value" },
  { names: ["-A", "--all-namespaces"], key: "allNamespaces", kind: "bool" },
  { names: ["-o", "--output"], key: "output", kind: "value", choices: ["table", "json"] },
];

interface Flags {
  namespace?: string;
  allNamespaces: boolean;
  output: "table" | "json";
  kubeconfig?: string;
  context?: string;
  positional: string[];
}

export function parseFlags(argv: string[]): Flags {
  const args = parseArgs(argv, STATUS_FLAGS);
  const namespace = str(args, "namespace");
  const kubeconfig = str(args, "kubeconfig");
  const context = str(args, "context");
  return {
    ...(namespace !== undefined ? { namespace } : {}),
    ...(kubeconfig !== undefined ? { kubeconfig } : {}),
    ...(context !== undefined ? { context } : {}),
    allNamespaces: bool(args, "allNamespaces"),
    output: str(args, "output") === "json" ? "json" : "table",
    positional: [...args.positional],
  };
}

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
    case "--help":
    case "-h":
      process.stdout.write(USAGE);
      return 0;
    case "help": {
      const topic = rest[0];
      if (topic === undefined) process.stdout.write(USAGE);
      else process.stdout.write(await usageOf(topic));
      return 0;
    }
    case "version":
    case "--version":
      process.stdout.write(`${version()}\n`);
      return 0;
    case "status": {
      if (rest.includes("--help") || rest.includes("-h")) {
        process.stdout.write(STATUS_USAGE);
        return 0;
      }
      return status(parseFlags(rest));
    }
    case "verify": {
      // Loaded on use: `custody status` and `version` stay quick.
      const { VERIFY_FLAGS, VERIFY_USAGE, verifyCommand } = await import("./verify.ts");
      const args = parseArgs(rest, VERIFY_FLAGS);
      if (args.help) {
        process.stdout.write(VERIFY_USAGE);
        return 0;
      }
      if (args.positional.length > 0)
        throw new UsageError(`verify takes no arguments, got ${JSON.stringify(args.positional[0])}`);
      return verifyCommand(args);
    }
    case "tree": {
      const { TREE_FLAGS, TREE_USAGE, treeCommand } = await import("./tree.ts");
      const args = parseArgs(rest, TREE_FLAGS);
      if (args.help) {
        process.stdout.write(TREE_USAGE);
        return 0;
      }
      return treeCommand(args);
    }
    case "audit": {
      const { AUDIT_FLAGS, AUDIT_USAGE, auditCommand } = await import("./audit.ts");
      const args = parseArgs(rest, AUDIT_FLAGS);
      if (args.help) {
        process.stdout.write(AUDIT_USAGE);
        return 0;
      }
      return auditCommand(args);
    }
    default:
      process.stderr.write(`custody: unknown command ${JSON.stringify(command)}\n\n${USAGE}`);
      return 2;
  }
}

async function usageOf(command: string): Promise<string> {
  if (command === "verify") return (await import("./verify.ts")).VERIFY_USAGE;
  if (command === "audit") return (await import("./audit.ts")).AUDIT_USAGE;
  if (command === "tree") return (await import("./tree.ts")).TREE_USAGE;
  if (command === "status") return STATUS_USAGE;
  throw new UsageError(`help: unknown command ${JSON.stringify(command)}`);
}

main(process.argv.slice(2)).then(
  (code) => {
    mark("exit");
    process.exit(code);
  },
  (err: unknown) => {
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`custody: ${message}\n`);
    if (err instanceof UsageError) {
      const command = process.argv[2];
      if (command === "status" || command === "verify" || command === "audit" || command === "tree")
        process.stderr.write(`(see custody ${command} --help)\n`);
    }
    process.exit(err instanceof UsageError ? 2 : 1);
  },
);
