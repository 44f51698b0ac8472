/**
 * The one documented context every policy rule sees (docs/policy.md), and its
 * CEL declaration. Pure: the operator and the decision endpoint build the
 * facts; this module only shapes them for the evaluator.
 */
import { Environment } from "@marcbachmann/cel-js";

export type PolicyStage = "issuance" | "renewal" | "action";

export interface PolicyFacts {
  readonly task: {
    readonly name: string;
    readonly namespace: string;
    readonly uid: string;
    /** Labels as admission recorded them at creation (not the live ones). */
    readonly labels: Readonly<Record<string, string>>;
    readonly agent: {
      readonly name: string;
      readonly model: { readonly provider: string; readonly name: string; readonly version: string };
      readonly tools: ReadonlyArray<{ readonly name: string; readonly version: string }>;
      readonly labels: Readonly<Record<string, string>>;
    };
    /** The requested scope (the task's spec.scope). */
    readonly scope: readonly string[];
    readonly ttlSeconds: number;
    readonly audiences: readonly string[];
    /** The parent task's name, "" for a root task. */
    readonly parent: string;
  };
  /** The principal at the root of the chain, as admission proved it. */
  readonly delegator: { readonly kind: string; readonly name: string; readonly groups: readonly string[] };
  /** Root first: the delegator, then each task down to this one. */
  readonly chain: ReadonlyArray<{ readonly kind: string; readonly name: string }>;
  readonly stage: PolicyStage;
  /** Milliseconds since the epoch. */
  readonly now: number;
  /** For an action: what is asked (AuthZEN action, resource, context). */
  readonly action?: { readonly name: string; readonly properties: Readonly<Record<string, unknown>> };
  readonly resource?: {
    readonly type: string;
    readonly id: string;
    readonly properties: Readonly<Record<string, unknown>>;
  };
  readonly context?: Readonly<Record<string, unknown>>;
}

/** Structural bounds the parser enforces (with the checks of compile.ts, evaluation cost is bounded at apply). */
export const CEL_LIMITS = {
  maxAstNodes: 400,
  maxDepth: 24,
  maxListElements: 64,
  maxMapEntries: 64,
  maxCallArguments: 8,
};

/** The CEL environment: every variable declared with its type, nothing else is resolvable. */
export function policyEnvironment(): Environment {
  return new Environment({ unlistedVariablesAreDyn: false, limits: CEL_LIMITS })
    .registerVariable({
      name: "task",
      schema: {
        name: "string",
        namespace: "string",
        uid: "string",
        labels: "map<string, string>",
        agent: {
          name: "string",
          model: { provider: "string", name: "string", version: "string" },
          tools: "list<map<string, string>>",
          labels: "map<string, string>",
        },
        scope: "list<string>",
        ttlSeconds: "int",
        audiences: "list<string>",
        parent: "string",
      },
    })
    .registerVariable({
      name: "delegator",
      schema: { kind: "string", name: "string", groups: "list<string>" },
    })
    .registerVariable("chain", "list<map<string, string>>")
    .registerVariable("stage", "string")
    .registerVariable("now", "google.protobuf.Timestamp")
    .registerVariable({ name: "action", schema: { name: "string", properties: "map<string, dyn>" } })
    .registerVariable({
      name: "resource",
      schema: { type: "string", id: "string", properties: "map<string, dyn>" },
    })
    .registerVariable("context", "map<string, dyn>");
}

/** The facts as the evaluator takes them (CEL ints are BigInt, timestamps Date). */
export function celContext(f: PolicyFacts): Record<string, unknown> {
  return {
    task: {
      name: f.task.name,
      namespace: f.task.namespace,
      uid: f.task.uid,
      labels: { ...f.task.labels },
      agent: {
        name: f.task.agent.name,
        model: { ...f.task.agent.model },
        tools: f.task.agent.tools.map((t) => ({ name: t.name, version: t.version })),
        labels: { ...f.task.agent.labels },
      },
      scope: [...f.task.scope],
      ttlSeconds: BigInt(Math.floor(f.task.ttlSeconds)),
      audiences: [...f.task.audiences],
      parent: f.task.parent,
    },
    delegator: { kind: f.delegator.kind, name: f.delegator.name, groups: [...f.delegator.groups] },
    chain: f.chain.map((l) => ({ kind: l.kind, name: l.name })),
    stage: f.stage,
    now: new Date(f.now),
    action: { name: f.action?.name ?? "", properties: toCel(f.action?.properties ?? {}) },
    resource: {
      type: f.resource?.type ?? "",
      id: f.resource?.id ?? "",
      properties: toCel(f.resource?.properties ?? {}),
    },
    context: toCel(f.context ?? {}),
  };
}

/** JSON from a request body as CEL values: whole numbers become ints, the rest stays as is. */
function toCel(value: Readonly<Record<string, unknown>>): Record<string, unknown> {
  const convert = (v: unknown): unknown => {
    if (typeof v === "number") return Number.isSafeInteger(v) ? BigInt(v) : v;
    if (Array.isArray(v)) return v.map(convert);
    if (v !== null && typeof v === "object") {
      const out: Record<string, unknown> = {};
      for (const [k, x] of Object.entries(v)) out[k] = convert(x);
      return out;
    }
    return v;
  };
  return convert(value) as Record<string, unknown>;
}
