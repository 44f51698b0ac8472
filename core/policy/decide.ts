/**
 * Which policies apply to a task, and what they decide together. Pure.
 *
 * - Selection reads only facts fixed at creation: namespace, agent, model,
 *   tools, the proven delegator and the labels admission recorded.
 * - Combination: a deny from any rule wins; narrowing takes the shortest
 *   maxTtl and drops every grant that a scopeCeiling does not cover; a
 *   narrowing that leaves no grant denies. With no policy in force the
 *   configured default applies (allow within the task's own scope, or deny).
 * - An expression that fails at runtime, or a policy whose evaluation runs
 *   past the time budget, denies (fail closed).
 */
import { createHash } from "node:crypto";
import { formatGrant, type Grant, grantCovers, validateScope } from "../scope.ts";
import type { CompiledPolicy, CompiledRule, PolicyRef } from "./compile.ts";
import { celContext, type PolicyFacts } from "./context.ts";

export type DefaultDecision = "allow" | "deny";

export interface PolicyDecision {
  readonly allowed: boolean;
  /** Why: each denying rule's message (policy/rule named), or the default. */
  readonly reasons: readonly string[];
  /** "none" when no policy is in force, else sha256:<hex> over the versions in force. */
  readonly version: string;
  readonly policies: readonly PolicyRef[];
  /** Issuance: the shortest maxTtl of the rules that applied. */
  readonly maxTtlMs?: number;
  /** Issuance: the task's grants that survive every scopeCeiling (all of them when none applied). */
  readonly scope: readonly string[];
  /** Issuance: grants dropped by a scopeCeiling. */
  readonly dropped: readonly string[];
}

export interface DecideOptions {
  readonly defaultDecision: DefaultDecision;
  /** Wall time one policy's rules may take; past it the policy denies. Default 5 ms. */
  readonly budgetMs?: number;
  /** A monotonic clock in ms (performance.now); injectable for tests. */
  readonly clock?: () => number;
}

export interface SelectionFacts {
  readonly namespace: string;
  readonly agent: string;
  readonly model: { readonly provider: string; readonly name: string; readonly version: string };
  readonly tools: readonly string[];
  readonly delegator: { readonly kind: string; readonly name: string; readonly groups: readonly string[] };
  /** As recorded at creation. */
  readonly labels: Readonly<Record<string, string>>;
}

export function selects(policy: CompiledPolicy, f: SelectionFacts): boolean {
  // An AgentPolicy governs its own namespace only.
  if (policy.kind === "AgentPolicy" && policy.namespace !== f.namespace) return false;
  // Normalised when compiled (normalizeSelector): an empty list is absent.
  const s = policy.selector;
  if (s.namespaces && policy.kind === "ClusterAgentPolicy" && !s.namespaces.includes(f.namespace))
    return false;
  if (s.agents && !s.agents.includes(f.agent)) return false;
  if (
    s.models &&
    !s.models.some(
      (m) =>
        (m.provider === undefined || m.provider === f.model.provider) &&
        (m.name === undefined || m.name === f.model.name) &&
        (m.version === undefined || m.version === f.model.version),
    )
  )
    return false;
  if (s.tools && !s.tools.some((t) => f.tools.includes(t))) return false;
  if (
    s.delegators &&
    !s.delegators.some(
      (d) => d.kind === f.delegator.kind && (d.name === undefined || d.name === f.delegator.name),
    )
  )
    return false;
  if (s.delegatorGroups && !s.delegatorGroups.some((g) => f.delegator.groups.includes(g))) return false;
  if (s.matchLabels) {
    for (const [k, v] of Object.entries(s.matchLabels)) if (f.labels[k] !== v) return false;
  }
  return true;
}

/** The combined version of the policies in force (order-independent). */
export function combinedVersion(policies: readonly PolicyRef[]): string {
  if (policies.length === 0) return "none";
  const lines = policies.map((p) => `${p.kind}/${p.namespace ?? ""}/${p.name}@${p.version}`).sort();
  return `sha256:${createHash("sha256").update(lines.join("\n"), "utf8").digest("hex")}`;
}

export function decide(
  policies: readonly CompiledPolicy[],
  facts: PolicyFacts,
  opts: DecideOptions,
): PolicyDecision {
  const stage = facts.stage === "action" ? "action" : "issuance";
  const inForce = [...policies].sort((a, b) =>
    `${a.kind}/${a.namespace ?? ""}/${a.name}`.localeCompare(`${b.kind}/${b.namespace ?? ""}/${b.name}`),
  );
  const refs: PolicyRef[] = inForce.map(({ kind, namespace, name, version }) => ({
    kind,
    ...(namespace ? { namespace } : {}),
    name,
    version,
  }));
  const version = combinedVersion(refs);
  const taskScope = validateScope(facts.task.scope, "task.scope");
  if (inForce.length === 0) {
    const allowed = opts.defaultDecision === "allow";
    return {
      allowed,
      reasons: [
        allowed
          ? "no policy in force: the default allows within the task's scope"
          : "no policy in force: the default denies",
      ],
      version,
      policies: refs,
      scope: taskScope.map(formatGrant),
      dropped: [],
    };
  }

  const clock = opts.clock ?? (() => performance.now());
  const budget = opts.budgetMs ?? 5;
  const context = celContext(facts);
  const reasons: string[] = [];
  let maxTtlMs: number | undefined;
  let kept: Grant[] = taskScope;
  for (const policy of inForce) {
    const label = `${policy.kind === "AgentPolicy" ? `${policy.namespace}/` : ""}${policy.name}`;
    const started = clock();
    for (const rule of policy.rules) {
      if (!rule.stages.has(stage)) continue;
      const outcome = runRule(rule, context);
      if (outcome.error !== undefined) {
        reasons.push(`${label}: rule ${rule.name} failed to evaluate, which denies: ${outcome.error}`);
        continue;
      }
      if (!outcome.applies) continue;
      if (outcome.denied) reasons.push(`${label}: rule ${rule.name}: ${rule.message}`);
      if (stage === "issuance") {
        if (rule.maxTtlMs !== undefined)
          maxTtlMs = Math.min(maxTtlMs ?? Number.POSITIVE_INFINITY, rule.maxTtlMs);
        if (rule.scopeCeiling) {
          const ceiling = rule.scopeCeiling;
          kept = kept.filter((g) => ceiling.some((c) => grantCovers(c, g)));
        }
      }
    }
    // Evaluation is synchronous and statically bounded; the budget catches
    // what the bounds missed, after the fact. A pause of the whole process
    // (garbage collection, a busy machine) must not deny, and a denial can
    // revoke: over budget once, the rules are timed again, and only a policy
    // over budget twice denies. (Its outcome is the first run's: evaluation
    // is deterministic.)
    let spent = clock() - started;
    if (spent > budget) {
      const again = clock();
      for (const rule of policy.rules) if (rule.stages.has(stage)) runRule(rule, context);
      spent = Math.min(spent, clock() - again);
    }
    if (spent > budget) {
      reasons.push(
        `${label}: evaluation took ${spent.toFixed(1)} ms, past its ${budget} ms budget, which denies`,
      );
    }
  }
  const dropped = taskScope.filter((g) => !kept.includes(g)).map(formatGrant);
  if (stage === "issuance" && kept.length === 0) {
    reasons.push("every grant of the task's scope was dropped by a scopeCeiling: nothing left to issue");
  }
  return {
    allowed: reasons.length === 0,
    reasons,
    version,
    policies: refs,
    ...(maxTtlMs !== undefined ? { maxTtlMs } : {}),
    scope: kept.map(formatGrant),
    dropped,
  };
}

function runRule(
  rule: CompiledRule,
  context: Record<string, unknown>,
): { applies: boolean; denied: boolean; error?: string } {
  try {
    if (rule.when && rule.when(context) !== true) return { applies: false, denied: false };
    const denied =
      (rule.deny !== undefined && rule.deny(context) === true) ||
      (rule.allow !== undefined && rule.allow(context) !== true);
    return { applies: true, denied };
  } catch (err) {
    return {
      applies: true,
      denied: true,
      error: ((err as Error).message ?? String(err)).split("\n")[0]!.slice(0, 300),
    };
  }
}
