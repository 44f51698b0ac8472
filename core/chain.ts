// The delegation-chain rules for a child AgentTask (one with spec.parentRef):
// whether it may be issued now, must wait for its ancestors, or is denied, and
// the chain (root principal first) that its certificate and status carry.
// Chain rules depend on the current state of other tasks, which admission
// cannot see consistently, so the operator evaluates them from its cache.
// Rules and their reasons: docs/delegation.md.
import { type AgentTask, type ChainLink, MAX_CHAIN_LENGTH, type Phase } from "./api/v1alpha1.ts";
import { DEFAULT_TTL, formatDuration, parseTtl } from "./duration.ts";
import { ValidationError } from "./errors.ts";
import { formatGrant, type Grant, scopeIsSubset, validateScope } from "./scope.ts";

export const DEFAULT_MAX_DEPTH = 5;
/** The chain holds the principal, the ancestors and the task, and the status caps its length. */
export const MAX_MAX_DEPTH = MAX_CHAIN_LENGTH - 2;

export type ChainLookup = (name: string) => AgentTask | undefined;

export interface ChainOptions {
  /** Most AgentTask hops allowed above a task (a root task has depth 0). Default 5. */
  readonly maxDepth?: number;
  /** Milliseconds since the epoch: ancestors whose deadline is at or before it count as expired. */
  readonly now: number;
}

/** Why a child waits: each clears by itself once the ancestors settle. */
export type WaitReason =
  | "ParentNotFound"
  | "AncestorNotFound"
  | "ParentNotIssued"
  | "AncestorNotIssued"
  | "RootDelegatorUnknown";

/** Why a child is denied: each needs a change to the child or to its ancestry. */
export type DenyReason =
  | "InvalidSpec"
  | "CycleDetected"
  | "DepthExceeded"
  | "ParentDenied"
  | "ParentExpired"
  | "ParentRevoked"
  | "ParentFailed"
  | "ParentInvalid"
  | "AncestorDenied"
  | "AncestorExpired"
  | "AncestorRevoked"
  | "AncestorFailed"
  | "AncestorReplaced"
  | "ScopeEscalation"
  | "AudienceEscalation"
  | "TtlExceedsParent"
  | "DeadlineExceedsParent";

export interface ChainAccepted {
  readonly ok: true;
  /** Root first: the root's delegating principal, then each AgentTask down to (and including) this task. */
  readonly chain: ChainLink[];
  /** AgentTask hops above this task: 1 for a child of a root task. */
  readonly depth: number;
  readonly rootUid: string;
  /** UIDs of the AgentTask links of `chain`, root task first, this task last. */
  readonly chainUids: string[];
  readonly parent: AgentTask;
  /**
   * The earliest deadline of this task and its ancestors (RFC 3339 as written),
   * or undefined if none has one. A child without a deadline inherits its
   * ancestors': certificates must not outlive it.
   */
  readonly effectiveDeadline: string | undefined;
  /** Whether `effectiveDeadline` comes from an ancestor rather than the task's own spec.deadline. */
  readonly deadlineInherited: boolean;
  /** The parent's granted ttl when a policy shortened it: a child's certificates live no longer. */
  readonly ttlCapMs?: number;
}

export interface ChainRefused {
  readonly ok: false;
  readonly kind: "wait" | "deny";
  readonly reason: WaitReason | DenyReason;
  /** The child's field the rule is about, e.g. `spec.scope[1]`. */
  readonly field: string;
  /** Names the field, the rule and the tasks involved. */
  readonly message: string;
}

export type ChainResult = ChainAccepted | ChainRefused;

const PARENT_FIELD = "spec.parentRef.name";

const wait = (reason: WaitReason, field: string, message: string): ChainRefused => ({
  ok: false,
  kind: "wait",
  reason,
  field,
  message,
});

const deny = (reason: DenyReason, field: string, message: string): ChainRefused => ({
  ok: false,
  kind: "deny",
  reason,
  field,
  message,
});

const quote = (s: string): string => JSON.stringify(s);

/** Phases of an ancestor that end its children's chance of being issued. */
const DEAD_PHASES: Readonly<Partial<Record<Phase, "Denied" | "Expired" | "Revoked" | "Failed">>> = {
  Denied: "Denied",
  Expired: "Expired",
  Revoked: "Revoked",
  Failed: "Failed",
};

function checkMaxDepth(maxDepth: number): void {
  if (!Number.isInteger(maxDepth) || maxDepth < 0 || maxDepth > MAX_MAX_DEPTH) {
    throw new RangeError(`maxDepth must be an integer from 0 to ${MAX_MAX_DEPTH}, got ${maxDepth}`);
  }
}

type Walk =
  | { readonly kind: "complete"; readonly ancestors: AgentTask[] }
  /** `missing` is named by the parentRef of the last of `ancestors` (or of the child when empty). */
  | { readonly kind: "missing"; readonly ancestors: AgentTask[]; readonly missing: string }
  | { readonly kind: "refused"; readonly refusal: ChainRefused };

/**
 * Follows parentRef upward, parent first. At most maxDepth + 1 lookups, so
 * a cycle ends the walk either as a repeated name or as a too-deep chain.
 */
function walkAncestors(child: AgentTask, lookup: ChainLookup, maxDepth: number): Walk {
  const ancestors: AgentTask[] = [];
  const path = [child.metadata.name];
  let current = child;
  for (;;) {
    const next = current.spec.parentRef?.name;
    if (next === undefined) return { kind: "complete", ancestors };
    if (path.includes(next)) {
      const loop = [...path, next].join(" → ");
      const self = next === child.metadata.name && ancestors.length === 0;
      return {
        kind: "refused",
        refusal: deny(
          "CycleDetected",
          PARENT_FIELD,
          self
            ? `${PARENT_FIELD}: task ${quote(next)} names itself as its parent (rule no-cycle)`
            : `${PARENT_FIELD}: the parentRef chain ${loop} loops and never reaches a root task (rule no-cycle)`,
        ),
      };
    }
    if (ancestors.length === maxDepth) {
      return {
        kind: "refused",
        refusal: deny(
          "DepthExceeded",
          PARENT_FIELD,
          `${PARENT_FIELD}: the chain ${[...path, next].join(" → ")} puts more than ${maxDepth} ` +
            `AgentTask hops above this task (rule max-depth ${maxDepth})`,
        ),
      };
    }
    const found = lookup(next);
    if (found === undefined) return { kind: "missing", ancestors, missing: next };
    ancestors.push(found);
    path.push(next);
    current = found;
  }
}

/** `parent "p"` or `ancestor "g"` (index 0 is the parent). */
function who(ancestors: readonly AgentTask[], index: number): string {
  return `${index === 0 ? "parent" : "ancestor"} ${quote(ancestors[index]!.metadata.name)}`;
}

/** A state of some ancestor that denies the child outright. */
function deadAncestor(ancestors: readonly AgentTask[], now: number): ChainRefused | undefined {
  for (let i = 0; i < ancestors.length; i++) {
    const a = ancestors[i]!;
    const prefix = i === 0 ? "Parent" : "Ancestor";
    const phase = a.status?.phase;
    const dead = phase === undefined ? undefined : DEAD_PHASES[phase];
    if (dead !== undefined) {
      return deny(
        `${prefix}${dead}`,
        PARENT_FIELD,
        `${PARENT_FIELD}: ${who(ancestors, i)} is ${dead}; a task is issued only while every ` +
          `task above it is Issued (rule parent-issued)`,
      );
    }
    // Decided but not yet written by the operator: the outcome is already certain.
    if (a.spec.revoked === true) {
      return deny(
        `${prefix}Revoked`,
        PARENT_FIELD,
        `${PARENT_FIELD}: ${who(ancestors, i)} is revoked (spec.revoked); ` +
          `its whole subtree is revoked with it (rule parent-issued)`,
      );
    }
    if (a.spec.deadline !== undefined && Date.parse(a.spec.deadline) <= now) {
      return deny(
        `${prefix}Expired`,
        PARENT_FIELD,
        `${PARENT_FIELD}: ${who(ancestors, i)} passed its deadline ${a.spec.deadline} (rule parent-issued)`,
      );
    }
  }
  return undefined;
}

/**
 * An ancestor deleted and re-created under the same name is a different
 * delegation: a chain recorded against the old UID must not carry over.
 */
function replacedAncestor(child: AgentTask, ancestors: readonly AgentTask[]): ChainRefused | undefined {
  const recorded = child.status?.delegationChain;
  if (recorded === undefined) return undefined;
  for (let i = 0; i < ancestors.length; i++) {
    const a = ancestors[i]!;
    const link = recorded.find((l) => l.kind === "AgentTask" && l.name === a.metadata.name);
    if (
      link !== undefined &&
      link.uid !== "" &&
      a.metadata.uid !== undefined &&
      link.uid !== a.metadata.uid
    ) {
      return deny(
        "AncestorReplaced",
        PARENT_FIELD,
        `${PARENT_FIELD}: ${who(ancestors, i)} now has uid ${a.metadata.uid}, but this task was ` +
          `delegated by uid ${link.uid}; a re-created task does not inherit its predecessor's ` +
          `delegations (rule same-ancestor)`,
      );
    }
  }
  return undefined;
}

function parseChildScope(child: AgentTask): Grant[] | ChainRefused {
  try {
    return validateScope(child.spec.scope, "spec.scope");
  } catch (e) {
    if (e instanceof ValidationError) return deny("InvalidSpec", e.field, e.message);
    throw e;
  }
}

function parseTtlOf(task: AgentTask, field: string): number | ValidationError {
  try {
    return parseTtl(task.spec.ttl ?? DEFAULT_TTL, field);
  } catch (e) {
    if (e instanceof ValidationError) return e;
    throw e;
  }
}

/** The parent's status.grantedTtl in ms, when it has a parseable one. */
function ttlCapOf(parent: AgentTask): number | undefined {
  const granted = parent.status?.grantedTtl;
  if (granted === undefined) return undefined;
  try {
    return parseTtl(granted, "status.grantedTtl");
  } catch {
    return undefined;
  }
}

/** `90m (1h30m)`: the text as written, with its normal form when that differs. */
function ttlText(written: string | undefined, ms: number): string {
  const normal = formatDuration(ms);
  return written === undefined || written === normal ? normal : `${written} (${normal})`;
}

/** The spec rules between the child and its parent: scope, ttl, deadline. */
function childWithinParent(
  child: AgentTask,
  ancestors: readonly AgentTask[],
): ChainRefused | { effectiveDeadline: string | undefined; deadlineInherited: boolean } {
  const parent = ancestors[0]!;
  const parentName = quote(parent.metadata.name);

  const childScope = parseChildScope(child);
  if (!Array.isArray(childScope)) return childScope;
  let parentScope: Grant[];
  try {
    // What the parent holds: its spec less what policy dropped (status.grantedScope).
    parentScope = validateScope(parent.status?.grantedScope ?? parent.spec.scope, "spec.scope");
  } catch (e) {
    if (!(e instanceof ValidationError)) throw e;
    return deny("ParentInvalid", PARENT_FIELD, `${PARENT_FIELD}: parent ${parentName}: ${e.message}`);
  }
  const subset = scopeIsSubset(childScope, parentScope);
  if (!subset.ok) {
    const field = `spec.scope[${subset.index}]`;
    return deny(
      "ScopeEscalation",
      field,
      `${field}: grant ${quote(formatGrant(subset.grant))} is not covered by any grant of parent ` +
        `${parentName} (${parentScope.map(formatGrant).join(", ")}); a child's scope must be a ` +
        `subset of its parent's (rule scope-subset)`,
    );
  }

  // Each audience is a service the delegator let the parent reach: a child
  // gets tokens for none its parent lacks.
  const parentAudiences = parent.spec.audiences ?? [];
  const extra = (child.spec.audiences ?? []).findIndex((a) => !parentAudiences.includes(a));
  if (extra >= 0) {
    const field = `spec.audiences[${extra}]`;
    return deny(
      "AudienceEscalation",
      field,
      `${field}: audience ${quote(child.spec.audiences![extra]!)} is not an audience of parent ${parentName} ` +
        `(${parentAudiences.length > 0 ? parentAudiences.map(quote).join(", ") : "none"}); a child's audiences ` +
        "must be a subset of its parent's (rule audiences-subset)",
    );
  }

  const childTtl = parseTtlOf(child, "spec.ttl");
  if (childTtl instanceof ValidationError) return deny("InvalidSpec", childTtl.field, childTtl.message);
  // Against the parent's spec: a policy that shortened only the parent's
  // certificates caps its children's (ttlCapMs), it does not deny them.
  const parentTtl = parseTtlOf(parent, "spec.ttl");
  if (parentTtl instanceof ValidationError) {
    return deny("ParentInvalid", PARENT_FIELD, `${PARENT_FIELD}: parent ${parentName}: ${parentTtl.message}`);
  }
  if (childTtl > parentTtl) {
    return deny(
      "TtlExceedsParent",
      "spec.ttl",
      `spec.ttl: ${ttlText(child.spec.ttl, childTtl)} is longer than parent ${parentName}'s ` +
        `ttl ${ttlText(parent.spec.ttl, parentTtl)} (rule ttl-within-parent)`,
    );
  }

  // The parent's effective deadline is the earliest along its own chain.
  let inherited: { at: number; text: string; from: number } | undefined;
  for (let i = 0; i < ancestors.length; i++) {
    const text = ancestors[i]!.spec.deadline;
    if (text === undefined) continue;
    const at = Date.parse(text);
    if (Number.isNaN(at)) {
      return deny(
        "ParentInvalid",
        PARENT_FIELD,
        `${PARENT_FIELD}: ${who(ancestors, i)} has an unparseable spec.deadline ${quote(text)}`,
      );
    }
    if (inherited === undefined || at < inherited.at) inherited = { at, text, from: i };
  }
  const own = child.spec.deadline;
  if (own === undefined) {
    return { effectiveDeadline: inherited?.text, deadlineInherited: inherited !== undefined };
  }
  const ownAt = Date.parse(own);
  if (Number.isNaN(ownAt)) {
    return deny(
      "InvalidSpec",
      "spec.deadline",
      `spec.deadline: ${quote(own)} is not an RFC 3339 date-time (rule date-time)`,
    );
  }
  if (inherited !== undefined && ownAt > inherited.at) {
    const source =
      inherited.from === 0
        ? `parent ${parentName}'s deadline ${inherited.text}`
        : `the deadline ${inherited.text} that parent ${parentName} inherits from ${who(ancestors, inherited.from)}`;
    return deny(
      "DeadlineExceedsParent",
      "spec.deadline",
      `spec.deadline: ${own} is later than ${source} (rule deadline-within-parent)`,
    );
  }
  return { effectiveDeadline: own, deadlineInherited: false };
}

/** The nearest ancestor that is not (yet) Issued, or whose spec changed since it was. */
function unsettledAncestor(ancestors: readonly AgentTask[]): ChainRefused | undefined {
  for (let i = 0; i < ancestors.length; i++) {
    const a = ancestors[i]!;
    const reason = i === 0 ? "ParentNotIssued" : "AncestorNotIssued";
    const status = a.status;
    if (status?.phase !== "Issued") {
      return wait(
        reason,
        PARENT_FIELD,
        `${PARENT_FIELD}: ${who(ancestors, i)} is ${status?.phase ?? "not yet reconciled"}; ` +
          `waiting until it is Issued (rule parent-issued)`,
      );
    }
    const generation = a.metadata.generation;
    if (generation !== undefined && status.observedGeneration !== generation) {
      return wait(
        reason,
        PARENT_FIELD,
        `${PARENT_FIELD}: ${who(ancestors, i)} changed its spec since it was Issued; ` +
          `waiting until it is evaluated again (rule parent-issued)`,
      );
    }
  }
  return undefined;
}

const taskLink = (t: AgentTask): ChainLink => ({
  kind: "AgentTask",
  name: t.metadata.name,
  uid: t.metadata.uid ?? "",
  scope: [...t.spec.scope],
});

/** The root's delegating principal, as proven when the root was issued. */
function principalLink(root: AgentTask): ChainLink | undefined {
  const recorded = root.status?.delegationChain?.[0];
  if (recorded !== undefined && recorded.kind !== "AgentTask") {
    return { ...recorded, scope: [...recorded.scope] };
  }
  const d = root.status?.delegator;
  if (d === undefined) return undefined;
  return { kind: d.kind, name: d.name, uid: d.uid ?? "", scope: [...root.spec.scope] };
}

/**
 * Decides whether a child AgentTask may be issued now. `lookup` resolves
 * task names in the child's namespace (the operator's cache). Pure: the
 * result depends only on the arguments.
 *
 * Denials win over waits: a child that breaks a rule against its parent's
 * current spec is told so at once, even while the parent is still Pending.
 */
export function evaluateChain(task: AgentTask, lookup: ChainLookup, options: ChainOptions): ChainResult {
  const parentName = task.spec.parentRef?.name;
  if (parentName === undefined) {
    throw new TypeError(`evaluateChain: task ${quote(task.metadata.name)} has no spec.parentRef`);
  }
  const maxDepth = options.maxDepth ?? DEFAULT_MAX_DEPTH;
  checkMaxDepth(maxDepth);

  const walk = walkAncestors(task, lookup, maxDepth);
  if (walk.kind === "refused") return walk.refusal;
  const { ancestors } = walk;
  if (ancestors.length === 0) {
    return wait(
      "ParentNotFound",
      PARENT_FIELD,
      `${PARENT_FIELD}: parent ${quote(parentName)} does not exist in this namespace; ` +
        `waiting for it to be created (rule parent-exists)`,
    );
  }

  const refusal = deadAncestor(ancestors, options.now) ?? replacedAncestor(task, ancestors);
  if (refusal !== undefined) return refusal;
  const within = childWithinParent(task, ancestors);
  if ("ok" in within) return within;

  if (walk.kind === "missing") {
    const below = ancestors[ancestors.length - 1]!.metadata.name;
    return wait(
      "AncestorNotFound",
      PARENT_FIELD,
      `${PARENT_FIELD}: ancestor ${quote(walk.missing)} (parent of ${quote(below)}) does not exist ` +
        `in this namespace; waiting for it to be created (rule parent-exists)`,
    );
  }
  const unsettled = unsettledAncestor(ancestors);
  if (unsettled !== undefined) return unsettled;

  const root = ancestors[ancestors.length - 1]!;
  const principal = principalLink(root);
  if (principal === undefined) {
    return wait(
      "RootDelegatorUnknown",
      PARENT_FIELD,
      `${PARENT_FIELD}: root task ${quote(root.metadata.name)} has no proven delegator in its status yet; ` +
        `waiting for it (rule parent-issued)`,
    );
  }
  const tasks = [...ancestors].reverse();
  tasks.push(task);
  const ttlCap = ttlCapOf(ancestors[0]!);
  return {
    ok: true,
    chain: [principal, ...tasks.map(taskLink)],
    depth: ancestors.length,
    rootUid: root.metadata.uid ?? "",
    chainUids: tasks.map((t) => t.metadata.uid ?? ""),
    parent: ancestors[0]!,
    effectiveDeadline: within.effectiveDeadline,
    deadlineInherited: within.deadlineInherited,
    ...(ttlCap !== undefined ? { ttlCapMs: ttlCap } : {}),
  };
}

export interface Descendant {
  readonly task: AgentTask;
  /** 1 for a direct child of the given task. */
  readonly depth: number;
}

/**
 * Every task whose parentRef chain leads to the named task, breadth first
 * (children, then grandchildren, ...), for cascading revocation. Accepts a
 * bare name or a `namespace/name` key; with a key, tasks from other
 * namespaces are ignored. The named task itself need not be in the list (it
 * may just have been deleted) and is never returned, even within a cycle.
 * O(n) in the number of tasks.
 */
export function descendantsOf(rootKeyOrName: string, tasksInNamespace: readonly AgentTask[]): Descendant[] {
  const slash = rootKeyOrName.indexOf("/");
  const namespace = slash < 0 ? undefined : rootKeyOrName.slice(0, slash);
  const rootName = slash < 0 ? rootKeyOrName : rootKeyOrName.slice(slash + 1);

  const children = new Map<string, AgentTask[]>();
  for (const t of tasksInNamespace) {
    if (namespace !== undefined && t.metadata.namespace !== undefined && t.metadata.namespace !== namespace) {
      continue;
    }
    const parent = t.spec.parentRef?.name;
    if (parent === undefined) continue;
    const list = children.get(parent);
    if (list === undefined) children.set(parent, [t]);
    else list.push(t);
  }

  const out: Descendant[] = [];
  const seen = new Set([rootName]);
  let frontier = [rootName];
  for (let depth = 1; frontier.length > 0; depth++) {
    const next: string[] = [];
    for (const name of frontier) {
      for (const child of children.get(name) ?? []) {
        if (seen.has(child.metadata.name)) continue;
        seen.add(child.metadata.name);
        out.push({ task: child, depth });
        next.push(child.metadata.name);
      }
    }
    frontier = next;
  }
  return out;
}
