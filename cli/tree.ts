// `custody tree [TASK] [-n NAMESPACE | -A] [-o text|json]`: the delegation
// tree of a namespace (every root task, its sub-agents nested by
// spec.parentRef) or of one task (its ancestors up to the principal who
// delegated the root, then its subtree), from the AgentTasks in the cluster.
// buildNamespaceTrees and buildTaskTree are pure (test/unit/cli-tree.test.ts).
import type { AgentTask } from "../core/api/v1alpha1.ts";
import { bool, type FlagDef, KUBE_FLAGS, type ParsedArgs, str, UsageError } from "./flags.ts";
import { connectCluster } from "./settings.ts";

export const TREE_USAGE = `usage: custody tree [TASK] [-n NAMESPACE | -A] [-o text|json]

Shows the delegation tree, from the AgentTasks in the cluster:
  without TASK   every root task of the namespace (delegated by a person,
                 group, service account or workflow) with its sub-agents
                 nested under it (spec.parentRef)
  with TASK      its ancestors up to the principal who delegated the root,
                 then the task and its sub-agents
Each line: name, phase, the delegator (roots), the scope, and the Ready
condition's reason for Denied and Revoked tasks. A task whose parent is not
in the cluster (deleted) is shown as a root, naming the missing parent.

flags:
  -n, --namespace NS         namespace (default: the kubeconfig context's, else default)
  -A, --all-namespaces       every namespace (without TASK only)
  -o, --output text|json     output format (default text)
  --kubeconfig PATH, --context NAME
`;

export const TREE_FLAGS: readonly FlagDef[] = [
  ...KUBE_FLAGS,
  { names: ["-n", "--namespace"], key: "namespace", kind: "value" },
  { names: ["-A", "--all-namespaces"], key: "allNamespaces", kind: "bool" },
  { names: ["-o", "--output"], key: "output", kind: "value", choices: ["text", "json"] },
];

export interface Principal {
  readonly kind: string;
  readonly name: string;
}

/** One task in the tree. */
export interface TreeNode {
  readonly namespace: string;
  readonly name: string;
  readonly phase: string;
  /** The verified delegator (status.delegator); set on roots only. */
  readonly delegator?: Principal;
  readonly scope: readonly string[];
  /** The Ready condition's reason and message, for Denied and Revoked tasks. */
  readonly reason?: string;
  readonly message?: string;
  /** spec.parentRef.name when that task is not in the cluster. */
  readonly missingParent?: string;
  readonly children: TreeNode[];
}

export interface NamespaceTree {
  readonly namespace: string;
  readonly roots: TreeNode[];
}

export interface TaskTree {
  readonly namespace: string;
  /** Who delegated the root task (status.delegator, else the chain's first link), if known. */
  readonly principal?: Principal;
  /** The task's ancestors, root first, without their other children. */
  readonly ancestors: Omit<TreeNode, "children">[];
  /** The task and its subtree. */
  readonly task: TreeNode;
}

const SHOWS_REASON = new Set(["Denied", "Revoked"]);

const key = (t: AgentTask) => `${t.metadata.namespace ?? ""}/${t.metadata.name}`;
const parentKey = (t: AgentTask) =>
  t.spec?.parentRef ? `${t.metadata.namespace ?? ""}/${t.spec.parentRef.name}` : undefined;

function line(t: AgentTask, present: ReadonlyMap<string, AgentTask>): Omit<TreeNode, "children"> {
  const phase = t.status?.phase ?? "Pending";
  const ready = t.status?.conditions?.find((c) => c.type === "Ready");
  const parent = parentKey(t);
  const isRoot = parent === undefined;
  const d = t.status?.delegator;
  return {
    namespace: t.metadata.namespace ?? "",
    name: t.metadata.name,
    phase,
    ...(isRoot && d ? { delegator: { kind: d.kind, name: d.name } } : {}),
    scope: [...(t.spec?.scope ?? [])],
    ...(SHOWS_REASON.has(phase) && ready?.reason
      ? { reason: ready.reason, ...(ready.message ? { message: ready.message } : {}) }
      : {}),
    ...(parent !== undefined && !present.has(parent) ? { missingParent: t.spec.parentRef!.name } : {}),
  };
}

const byName = (a: { name: string }, b: { name: string }) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

function index(tasks: readonly AgentTask[]) {
  const present = new Map(tasks.map((t) => [key(t), t]));
  const children = new Map<string, AgentTask[]>();
  for (const t of tasks) {
    const p = parentKey(t);
    if (p === undefined || !present.has(p)) continue;
    children.set(p, [...(children.get(p) ?? []), t]);
  }
  return { present, children };
}

function subtree(t: AgentTask, ix: ReturnType<typeof index>, seen: Set<string> = new Set()): TreeNode {
  seen.add(key(t));
  const kids = (ix.children.get(key(t)) ?? []).filter((c) => !seen.has(key(c)));
  return {
    ...line(t, ix.present),
    children: kids.map((c) => subtree(c, ix, seen)).sort(byName),
  };
}

/**
 * Every namespace's roots (tasks without spec.parentRef, and tasks whose
 * parent is not in the list) with their subtrees, namespaces and siblings by name.
 */
export function buildNamespaceTrees(tasks: readonly AgentTask[]): NamespaceTree[] {
  const ix = index(tasks);
  const seen = new Set<string>();
  const byNs = new Map<string, TreeNode[]>();
  const add = (t: AgentTask) => {
    const ns = t.metadata.namespace ?? "";
    byNs.set(ns, [...(byNs.get(ns) ?? []), subtree(t, ix, seen)]);
  };
  for (const t of tasks) {
    const p = parentKey(t);
    if (p === undefined || !ix.present.has(p)) add(t);
  }
  // Whatever no root reaches (a parentRef cycle, which the operator denies) is shown as roots too.
  for (const t of [...tasks].sort((a, b) => byName(a.metadata, b.metadata))) if (!seen.has(key(t))) add(t);
  return [...byNs.entries()]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([namespace, roots]) => ({ namespace, roots: roots.sort(byName) }));
}

/** One task's ancestors up to the principal, then its subtree; undefined when the task is not in the list. */
export function buildTaskTree(
  tasks: readonly AgentTask[],
  namespace: string,
  name: string,
): TaskTree | undefined {
  const ix = index(tasks);
  const focus = ix.present.get(`${namespace}/${name}`);
  if (focus === undefined) return undefined;
  const ancestors: AgentTask[] = [];
  const seen = new Set([key(focus)]);
  let cur = focus;
  for (;;) {
    const p = parentKey(cur);
    const parent = p === undefined ? undefined : ix.present.get(p);
    if (parent === undefined || seen.has(key(parent))) break;
    seen.add(key(parent));
    ancestors.unshift(parent);
    cur = parent;
  }
  const root = ancestors[0] ?? focus;
  const d = root.status?.delegator;
  // The root's own delegator; else (its parent is gone) the first principal of the task's recorded chain.
  const first = (focus.status?.delegationChain ?? [])[0];
  const principal: Principal | undefined =
    root.spec?.parentRef === undefined && d
      ? { kind: d.kind, name: d.name }
      : first && first.kind !== "AgentTask"
        ? { kind: first.kind, name: first.name }
        : undefined;
  return {
    namespace,
    ...(principal ? { principal } : {}),
    ancestors: ancestors.map((a) => line(a, ix.present)),
    task: subtree(focus, ix, new Set(ancestors.map(key))),
  };
}

// ---------------------------------------------------------------- text

function describe(n: Omit<TreeNode, "children">): string {
  const parts = [n.name, n.phase];
  if (n.delegator) parts.push(`delegated by ${n.delegator.kind}/${n.delegator.name}`);
  if (n.missingParent) parts.push(`parent ${n.missingParent} (not found)`);
  parts.push(`scope: ${n.scope.length > 0 ? n.scope.join(", ") : "(none)"}`);
  if (n.reason) parts.push(`reason: ${n.reason}`);
  return parts.join("  ");
}

function renderChildren(children: readonly TreeNode[], prefix: string, out: string[]): void {
  children.forEach((c, i) => {
    const last = i === children.length - 1;
    out.push(`${prefix}${last ? "└── " : "├── "}${describe(c)}`);
    renderChildren(c.children, `${prefix}${last ? "    " : "│   "}`, out);
  });
}

export function renderNamespaceTrees(trees: readonly NamespaceTree[], withNamespace: boolean): string {
  const out: string[] = [];
  for (const t of trees) {
    if (withNamespace) out.push(`namespace ${t.namespace}:`);
    const indent = withNamespace ? "  " : "";
    for (const r of t.roots) {
      out.push(`${indent}${describe(r)}`);
      renderChildren(r.children, indent, out);
    }
  }
  return out.length > 0 ? `${out.join("\n")}\n` : "";
}

export function renderTaskTree(t: TaskTree): string {
  const out: string[] = [];
  let prefix = "";
  if (t.principal) {
    out.push(`${t.principal.kind}/${t.principal.name}`);
  }
  const chain = [...t.ancestors, t.task];
  chain.forEach((n, i) => {
    const connector = i === 0 && !t.principal ? "" : "└── ";
    const isTask = i === chain.length - 1;
    out.push(`${prefix}${connector}${describe(n)}${isTask ? "   <= this task" : ""}`);
    prefix = i === 0 && !t.principal ? "" : `${prefix}    `;
  });
  renderChildren(t.task.children, prefix, out);
  return `${out.join("\n")}\n`;
}

// ---------------------------------------------------------------- command

export async function treeCommand(args: ParsedArgs): Promise<number> {
  if (args.positional.length > 1) {
    throw new UsageError(
      `one task at a time, got ${args.positional.map((p) => JSON.stringify(p)).join(" ")}`,
    );
  }
  const name = args.positional[0];
  const all = bool(args, "allNamespaces");
  if (all && name !== undefined)
    throw new UsageError("-A: not with a TASK (a task is looked up in one namespace)");
  if (all && str(args, "namespace") !== undefined) throw new UsageError("-A and -n: give one of them");
  const json = str(args, "output") === "json";
  const cluster = connectCluster(args);
  if ("error" in cluster) throw new Error(`cannot reach the cluster: ${cluster.error}`);
  const { rest } = cluster;
  try {
    const ns = str(args, "namespace") ?? cluster.namespace ?? "default";
    const path = all
      ? "/apis/custody.dev/v1alpha1/agenttasks"
      : `/apis/custody.dev/v1alpha1/namespaces/${encodeURIComponent(ns)}/agenttasks`;
    const tasks = (await rest.get<{ items: AgentTask[] }>(path)).items;
    if (name !== undefined) {
      const tree = buildTaskTree(tasks, ns, name);
      if (tree === undefined) {
        process.stderr.write(`custody: AgentTask ${ns}/${name} not found\n`);
        return 1;
      }
      process.stdout.write(json ? `${JSON.stringify(tree, null, 2)}\n` : renderTaskTree(tree));
      return 0;
    }
    const trees = buildNamespaceTrees(tasks);
    if (json) {
      process.stdout.write(
        `${JSON.stringify(all ? trees : (trees[0] ?? { namespace: ns, roots: [] }), null, 2)}\n`,
      );
      return 0;
    }
    if (trees.length === 0) {
      process.stderr.write(all ? "No AgentTasks found.\n" : `No AgentTasks found in namespace ${ns}.\n`);
      return 0;
    }
    process.stdout.write(renderNamespaceTrees(trees, all));
    return 0;
  } finally {
    rest.close();
  }
}
