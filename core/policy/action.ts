/**
 * A per-action decision (AuthZEN Access Evaluation): the task's current
 * state, its granted scope and the policies in force, combined. Pure; the
 * decision endpoint validates who asks and about whom before calling it.
 *
 * Order: a task that is not Issued (revoked, expired, denied, being deleted)
 * denies; an action outside the granted scope denies (policy can only narrow,
 * never widen); then the policies for stage `action` decide, deny winning.
 */
import { type Grant, scopeAllows, validateScope } from "../scope.ts";
import type { CompiledPolicy } from "./compile.ts";
import type { PolicyFacts } from "./context.ts";
import { type DecideOptions, decide, type PolicyDecision } from "./decide.ts";

export interface ActionRequest {
  /** AuthZEN action.name: the verb of the scope grammar (e.g. read). */
  readonly action: string;
  readonly actionProperties?: Readonly<Record<string, unknown>>;
  /** AuthZEN resource: type (free) and id, a path of the scope grammar (e.g. repos/acme/api). */
  readonly resource: {
    readonly type: string;
    readonly id: string;
    readonly properties?: Readonly<Record<string, unknown>>;
  };
  readonly context?: Readonly<Record<string, unknown>>;
}

export interface TaskState {
  readonly phase: string | undefined;
  readonly revoked: boolean;
  readonly deleting: boolean;
  /** notAfter of the certificate (ms); past it the task has no valid credential. */
  readonly notAfter: number | undefined;
  /** The scope the credential carries (status.grantedScope, else spec.scope). */
  readonly grantedScope: readonly string[];
}

export interface ActionDecision extends Pick<PolicyDecision, "version" | "policies"> {
  readonly allowed: boolean;
  readonly reasons: readonly string[];
}

export function decideAction(args: {
  facts: Omit<PolicyFacts, "stage" | "action" | "resource" | "context">;
  state: TaskState;
  request: ActionRequest;
  policies: readonly CompiledPolicy[];
  options: DecideOptions;
}): ActionDecision {
  const { state, request } = args;
  const none = { version: "none", policies: [] };
  if (state.revoked || state.phase === "Revoked")
    return { allowed: false, reasons: ["the task is revoked"], ...none };
  if (state.deleting) return { allowed: false, reasons: ["the task is being deleted"], ...none };
  if (state.phase !== "Issued") {
    return { allowed: false, reasons: [`the task is ${state.phase ?? "not issued"}, not Issued`], ...none };
  }
  if (state.notAfter === undefined || state.notAfter <= args.facts.now) {
    return { allowed: false, reasons: ["the task's credential has expired"], ...none };
  }
  let granted: Grant[];
  try {
    granted = validateScope(state.grantedScope, "grantedScope");
  } catch {
    return { allowed: false, reasons: ["the task's granted scope does not parse"], ...none };
  }
  const policy = decide(
    args.policies,
    {
      ...args.facts,
      stage: "action",
      action: { name: request.action, properties: request.actionProperties ?? {} },
      resource: {
        type: request.resource.type,
        id: request.resource.id,
        properties: request.resource.properties ?? {},
      },
      context: request.context ?? {},
    },
    args.options,
  );
  const reasons: string[] = [];
  if (!scopeAllows(granted, { verb: request.action, path: request.resource.id })) {
    reasons.push(`${request.action}:${request.resource.id} is outside the task's scope`);
  }
  // The default applies only when no policy is in force; with a deny default
  // nothing is allowed, within scope or not.
  if (!policy.allowed) reasons.push(...policy.reasons);
  return { allowed: reasons.length === 0, reasons, version: policy.version, policies: policy.policies };
}
