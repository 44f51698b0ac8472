// The policies in force, compiled once per version, and the facts a task is
// judged on. Fed by the AgentPolicy and ClusterAgentPolicy informers; read
// by the reconciler (issuance, renewal, re-evaluation on change) and by the
// decision endpoint (every action).

import type { RequesterRecord } from "../core/admission/record.ts";
import type { AgentPolicy } from "../core/api/policy.ts";
import type { AgentTask } from "../core/api/v1alpha1.ts";
import { parseTtl } from "../core/duration.ts";
import {
  type CompiledPolicy,
  compilePolicy,
  normalizeSelector,
  policyVersion,
} from "../core/policy/compile.ts";
import type { PolicyFacts, PolicyStage } from "../core/policy/context.ts";
import {
  type DefaultDecision,
  decide,
  type PolicyDecision,
  type SelectionFacts,
  selects,
} from "../core/policy/decide.ts";

export class PolicyStore {
  /** kind/namespace/name → compiled (or a stand-in that denies, for one that does not compile). */
  readonly #inForce = new Map<string, CompiledPolicy>();
  readonly defaultDecision: DefaultDecision;
  readonly budgetMs: number;

  constructor(opts: { defaultDecision: DefaultDecision; budgetMs?: number }) {
    this.defaultDecision = opts.defaultDecision;
    this.budgetMs = opts.budgetMs ?? 5;
  }

  /** Adds or replaces a policy; returns the compiled form that was in force before (for re-evaluation). */
  upsert(policy: AgentPolicy): { before: CompiledPolicy | undefined; after: CompiledPolicy } {
    const key = keyOf(policy);
    const before = this.#inForce.get(key);
    const version = policyVersion(policy);
    // A resync delivers the same version again: it compiled (or was refused) once already.
    if (before?.version === version) return { before, after: before };
    let after: CompiledPolicy;
    try {
      after = compilePolicy(policy, { version });
    } catch (err) {
      // It does not compile, or any fault compiling it: still in force,
      // denying what it selects (never silently absent).
      after = refusing(policy, err instanceof Error ? err : new Error(String(err)), version);
    }
    this.#inForce.set(key, after);
    return { before, after };
  }

  remove(policy: Pick<AgentPolicy, "kind" | "metadata">): CompiledPolicy | undefined {
    const key = keyOf(policy);
    const before = this.#inForce.get(key);
    this.#inForce.delete(key);
    return before;
  }

  /** The policies that select a task (by facts fixed at its creation). */
  select(facts: SelectionFacts): CompiledPolicy[] {
    const out: CompiledPolicy[] = [];
    for (const p of this.#inForce.values()) if (selects(p, facts)) out.push(p);
    return out;
  }

  /** Decides over the policies `select` returned for these facts. */
  decide(facts: PolicyFacts, selected: readonly CompiledPolicy[]): PolicyDecision {
    return decide(selected, facts, {
      defaultDecision: this.defaultDecision,
      budgetMs: this.budgetMs,
    });
  }
}

function keyOf(p: Pick<AgentPolicy, "kind" | "metadata">): string {
  return `${p.kind}/${p.metadata.namespace ?? ""}/${p.metadata.name}`;
}

/**
 * A stored policy that does not compile (admitted before the webhook was
 * registered, or by another version of Custody) still selects its tasks and
 * denies them, naming why: fail closed, never skipped.
 */
function refusing(policy: AgentPolicy, err: Error, version: string): CompiledPolicy {
  const message = `the policy does not compile: ${err.message}`.slice(0, 512);
  return {
    kind: policy.kind,
    ...(policy.metadata.namespace ? { namespace: policy.metadata.namespace } : {}),
    name: policy.metadata.name,
    version,
    selector: normalizeSelector(policy.spec?.selector as CompiledPolicy["selector"] | undefined),
    rules: [{ name: "does-not-compile", stages: new Set(["issuance", "action"]), deny: () => true, message }],
  };
}

// ---------------------------------------------------------------- facts

const DELEGATOR_KIND: Record<string, string> = {
  User: "User",
  Group: "Group",
  ServiceAccount: "ServiceAccount",
  Workflow: "Workflow",
};

/**
 * What selectors match: the task's immutable spec, the proven root delegator
 * (the chain's first link), the labels admission recorded at creation.
 */
export function selectionFacts(
  task: AgentTask,
  record: RequesterRecord | undefined,
  chain: ReadonlyArray<{ kind: string; name: string }> | undefined,
  rootGroups: readonly string[],
): SelectionFacts {
  const root = chain?.[0];
  const delegator = root
    ? { kind: root.kind, name: root.name, groups: rootGroups }
    : record && record.delegator.kind !== "AgentTask"
      ? {
          kind: DELEGATOR_KIND[record.delegator.kind] ?? record.delegator.kind,
          name: record.delegator.name,
          groups: record.delegator.groups ?? rootGroups,
        }
      : { kind: "", name: "", groups: [] };
  const model = task.spec.agent.model;
  return {
    namespace: task.metadata.namespace ?? "",
    agent: task.spec.agent.name,
    model: { provider: model?.provider ?? "", name: model?.name ?? "", version: model?.version ?? "" },
    tools: (task.spec.agent.tools ?? []).map((t) => t.name),
    delegator,
    labels: record?.labels ?? {},
  };
}

/** The full context rules see at issuance or renewal (docs/policy.md). */
export function issuanceFacts(
  task: AgentTask,
  selection: SelectionFacts,
  chain: ReadonlyArray<{ kind: string; name: string }>,
  stage: PolicyStage,
  now: number,
): PolicyFacts {
  const model = task.spec.agent.model;
  return {
    task: {
      name: task.metadata.name,
      namespace: task.metadata.namespace ?? "",
      uid: task.metadata.uid ?? "",
      labels: selection.labels,
      agent: {
        name: task.spec.agent.name,
        model: { provider: model?.provider ?? "", name: model?.name ?? "", version: model?.version ?? "" },
        tools: (task.spec.agent.tools ?? []).map((t) => ({ name: t.name, version: t.version ?? "" })),
        labels: task.spec.agent.labels ?? {},
      },
      scope: task.spec.scope,
      ttlSeconds: Math.floor(parseTtl(task.spec.ttl ?? "1h", "spec.ttl") / 1000),
      audiences: task.spec.audiences ?? [],
      parent: task.spec.parentRef?.name ?? "",
    },
    delegator: selection.delegator,
    chain: chain.map((l) => ({ kind: l.kind, name: l.name })),
    stage,
    now,
  };
}

/**
 * The groups of the root delegator (a User), as admission recorded them: a
 * root task's from its own record, a sub-agent's from its root task's status
 * (chain[1] is the root task).
 */
export function rootDelegatorGroups(
  task: AgentTask,
  record: RequesterRecord | undefined,
  chain: ReadonlyArray<{ name: string }> | undefined,
  getTask: (key: string) => AgentTask | undefined,
): readonly string[] {
  if (task.spec.parentRef) {
    return (
      getTask(`${task.metadata.namespace ?? ""}/${chain?.[1]?.name ?? ""}`)?.status?.delegator?.groups ?? []
    );
  }
  return record?.delegator.groups ?? task.status?.delegator?.groups ?? [];
}
