// What the operator should do with an AgentTask right now, decided purely
// from the object, the credential it last wrote and the time. The reconciler
// shell carries the decision out; keeping the decision here keeps every rule
// unit-testable without a cluster.
import {
  type AgentTask,
  type AgentTaskSpec,
  type AgentTaskStatus,
  type Condition,
  type Phase,
  parseAgentTaskSpec,
} from "./api/v1alpha1.ts";
import { parseTtl } from "./duration.ts";
import { ValidationError } from "./errors.ts";

export const TERMINAL_PHASES: ReadonlySet<Phase> = new Set(["Expired", "Revoked"]);

/** What the operator observed of the task's credential Secret. */
export interface CredentialObservation {
  /** Serial (hex) recorded on the Secret, or undefined when there is no Secret. */
  readonly serial: string | undefined;
}

export type IssueReason =
  | "NoCertificate"
  | "SpecChanged"
  | "RenewalDue"
  | "CredentialMissing"
  | "PolicyChanged";

export type Decision =
  /** The spec breaks a rule: no credential, phase Denied with the field and rule. */
  | { readonly kind: "deny"; readonly reason: string; readonly field: string; readonly message: string }
  /** The deadline passed: credential deleted, phase Expired. */
  | { readonly kind: "expire"; readonly message: string }
  /** spec.revoked: credential deleted, phase Revoked. */
  | { readonly kind: "revoke"; readonly message: string }
  /** Mint (or renew) now. */
  | {
      readonly kind: "issue";
      readonly why: IssueReason;
      readonly spec: AgentTaskSpec;
      readonly ttlMs: number;
    }
  /** The current credential is good; look again at `wakeAt` (renewal time or deadline). */
  | { readonly kind: "wait"; readonly wakeAt: number }
  /** A terminal phase: nothing more to do. */
  | { readonly kind: "done" };

export function decide(task: AgentTask, credential: CredentialObservation, now: number): Decision {
  const status = task.status;
  if (status?.phase !== undefined && TERMINAL_PHASES.has(status.phase)) return { kind: "done" };

  const generation = task.metadata.generation ?? 0;
  // A task denied for an older generation is looked at again; one denied for
  // this generation stays denied until its spec changes. (Failed is the
  // operator's own failure, e.g. an expired CA: it is retried.)
  if (status?.phase === "Denied") {
    if (status.observedGeneration === generation) return { kind: "done" };
  }

  let spec: AgentTaskSpec;
  let ttlMs: number;
  try {
    spec = parseAgentTaskSpec(task.spec);
    ttlMs = parseTtl(spec.ttl);
  } catch (err) {
    if (err instanceof ValidationError) {
      return { kind: "deny", reason: "InvalidSpec", field: err.field, message: err.message };
    }
    throw err;
  }

  if (spec.revoked === true) {
    const why = spec.revocationReason ? `: ${spec.revocationReason}` : "";
    return { kind: "revoke", message: `revoked by spec.revoked${why}` };
  }

  if (spec.deadline !== undefined) {
    const deadline = Date.parse(spec.deadline);
    if (deadline <= now) {
      // A task that never held a credential was asked for with a deadline
      // already past: that is bad input, not an expiry.
      if (status?.certificate === undefined && status?.phase !== "Issued") {
        return {
          kind: "deny",
          reason: "DeadlinePassed",
          field: "spec.deadline",
          message: `spec.deadline: ${spec.deadline} is in the past (rule future)`,
        };
      }
      return { kind: "expire", message: `spec.deadline ${spec.deadline} has passed` };
    }
  }

  const cert = status?.certificate;
  if (status?.phase !== "Issued" || cert === undefined) {
    return { kind: "issue", why: "NoCertificate", spec, ttlMs };
  }
  if (status.observedGeneration !== generation) return { kind: "issue", why: "SpecChanged", spec, ttlMs };
  if (credential.serial !== cert.serial) return { kind: "issue", why: "CredentialMissing", spec, ttlMs };
  const renewAt = Date.parse(cert.renewalTime);
  if (!(renewAt > now)) return { kind: "issue", why: "RenewalDue", spec, ttlMs };
  const deadline = spec.deadline !== undefined ? Date.parse(spec.deadline) : Number.POSITIVE_INFINITY;
  return { kind: "wait", wakeAt: Math.min(renewAt, deadline) };
}

export interface Validity {
  readonly notBefore: number;
  readonly notAfter: number;
  readonly renewalTime: number;
}

/** Certificates are backdated this much so a verifier whose clock lags still accepts them. */
export const BACKDATE_MS = 30_000;

/**
 * The validity window of a new certificate: ttl from now, never past the
 * deadline or the CA's own expiry; renewal at about half the lifetime, with
 * jitter (`jitterUnit` in [0,1) is passed in) spread over ±`jitter` of the
 * lifetime so that a burst of tasks does not renew in lockstep.
 */
export function validityWindow(args: {
  now: number;
  ttlMs: number;
  deadline?: string | undefined;
  caNotAfter: number;
  jitter: number;
  jitterUnit: number;
}): Validity {
  const notBefore = Math.floor((args.now - BACKDATE_MS) / 1000) * 1000;
  const deadline = args.deadline !== undefined ? Date.parse(args.deadline) : Number.POSITIVE_INFINITY;
  const notAfter = Math.floor(Math.min(args.now + args.ttlMs, deadline, args.caNotAfter) / 1000) * 1000;
  const lifetime = notAfter - args.now;
  const fraction = 0.5 + (args.jitterUnit * 2 - 1) * args.jitter;
  const renewalTime = Math.floor((args.now + lifetime * fraction) / 1000) * 1000;
  return { notBefore, notAfter, renewalTime: Math.max(renewalTime, args.now + 1000) };
}

/**
 * Sets (or replaces) one condition, keeping lastTransitionTime when the status
 * did not change, as Kubernetes conventions ask.
 */
export function setCondition(
  conditions: readonly Condition[] | undefined,
  next: Omit<Condition, "lastTransitionTime">,
  nowIso: string,
): Condition[] {
  const out: Condition[] = [];
  let placed = false;
  for (const c of conditions ?? []) {
    if (c.type !== next.type) {
      out.push(c);
      continue;
    }
    placed = true;
    out.push({ ...next, lastTransitionTime: c.status === next.status ? c.lastTransitionTime : nowIso });
  }
  if (!placed) out.push({ ...next, lastTransitionTime: nowIso });
  return out;
}

/** Structural equality for status objects (JSON-shaped), to skip writes that change nothing. */
export function sameStatus(a: AgentTaskStatus | undefined, b: AgentTaskStatus | undefined): boolean {
  return stableJson(a ?? {}) === stableJson(b ?? {});
}

function stableJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stableJson).join(",")}]`;
  if (v !== null && typeof v === "object") {
    const entries = Object.entries(v as Record<string, unknown>)
      .filter(([, x]) => x !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${stableJson(x)}`).join(",")}}`;
  }
  return JSON.stringify(v);
}
