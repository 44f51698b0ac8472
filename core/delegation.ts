// The delegation facts bound into a credential: who delegated, the chain of
// hops root first, and the digests that the certificate extension, the status
// and provenance events share so that each can be checked against the others.
import { createHash, type KeyObject } from "node:crypto";
import type { AgentTaskSpec, ChainLink, DelegatorKind, StatusDelegator } from "./api/v1alpha1.ts";
import { canonicalize } from "./provenance/canonical-json.ts";
import type { DelegationContext } from "./provenance/events.ts";
import type { DelegationInfo, PrincipalKind } from "./x509/delegation-extension.ts";

const PRINCIPAL_KIND: Record<DelegatorKind, PrincipalKind> = {
  User: "user",
  Group: "group",
  ServiceAccount: "serviceaccount",
  Workflow: "workflow",
};

export const sha256 = (text: string): Buffer => createHash("sha256").update(text, "utf8").digest();

/** SHA-256 over the RFC 8785 form of the spec: the identity-defining content of the task. */
export function specDigest(spec: AgentTaskSpec): Buffer {
  return sha256(canonicalize(spec));
}

/**
 * The fields that define a task's identity: admission signs their digest, and
 * the API server refuses an UPDATE that changes any of them (CEL transition
 * rules), so a change needs a new task.
 */
export const IDENTITY_FIELDS = [
  "agent",
  "delegator",
  "scope",
  "parentRef",
  "serviceAccountName",
  "ttl",
  "deadline",
  "audiences",
] as const;

/**
 * SHA-256 (hex) over the RFC 8785 form of the identity-defining fields only:
 * what the admission record and delegation assertions bind to. Fields outside
 * IDENTITY_FIELDS (e.g. `revoked`) may change without breaking the record.
 */
export function identitySpecDigest(spec: Partial<Record<string, unknown>>): string {
  const picked: Record<string, unknown> = {};
  for (const f of IDENTITY_FIELDS) if (spec[f] !== undefined) picked[f] = spec[f];
  return createHash("sha256").update(canonicalize(picked), "utf8").digest("hex");
}

/** SHA-256 over the RFC 8785 form of the chain (root first). */
export function chainDigest(chain: readonly ChainLink[]): Buffer {
  return sha256(canonicalize(chain));
}

export interface TaskRef {
  readonly name: string;
  readonly uid: string;
}

/**
 * The chain of a root task: the delegating principal, who granted the task's
 * scope, then the task itself. (Sub-agents prepend their parent's chain.)
 */
export function rootChain(delegator: StatusDelegator, task: TaskRef, scope: readonly string[]): ChainLink[] {
  return [
    { kind: delegator.kind, name: delegator.name, uid: delegator.uid ?? "", scope: [...scope] },
    { kind: "AgentTask", name: task.name, uid: task.uid, scope: [...scope] },
  ];
}

export function delegationInfo(args: {
  taskUid: string;
  delegator: StatusDelegator;
  spec: AgentTaskSpec;
  chain: readonly ChainLink[];
  policyVersion: string;
  /** The scope policy left (spec.scope less what a scopeCeiling dropped); default spec.scope. */
  grantedScope?: readonly string[];
}): DelegationInfo {
  const { delegator } = args;
  return {
    taskUid: args.taskUid,
    delegator: {
      kind: PRINCIPAL_KIND[delegator.kind],
      name: delegator.name,
      ...(delegator.uid ? { uid: delegator.uid } : {}),
    },
    scope: args.grantedScope ?? args.spec.scope,
    chainDigest: chainDigest(args.chain),
    // Hops between the principal and this task: 0 for a root task.
    chainDepth: Math.max(0, args.chain.length - 2),
    policyVersion: args.policyVersion,
    specDigest: specDigest(args.spec),
  };
}

/**
 * The SPIFFE trust bundle document (SPIFFE Trust Domain and Bundle spec):
 * a JWK Set whose X.509 authorities carry `use: x509-svid` and the CA
 * certificate in `x5c`, and whose JWT authorities carry `use: jwt-svid` and
 * their `kid`.
 */
export function spiffeBundleJson(
  authorities: ReadonlyArray<{ der: Uint8Array; publicKey: KeyObject }>,
  sequence: number,
  refreshHintSeconds: number,
  jwtAuthorities: ReadonlyArray<Record<string, string>> = [],
): string {
  const keys: Array<Record<string, unknown>> = authorities.map(({ der, publicKey }) => {
    const jwk = publicKey.export({ format: "jwk" }) as Record<string, string>;
    return {
      use: "x509-svid",
      kty: jwk.kty,
      crv: jwk.crv,
      x: jwk.x,
      y: jwk.y,
      x5c: [Buffer.from(der).toString("base64")],
    };
  });
  keys.push(...jwtAuthorities);
  return `${JSON.stringify({ keys, spiffe_sequence: sequence, spiffe_refresh_hint: refreshHintSeconds }, null, 2)}\n`;
}

/**
 * Where an event about a task sits in the delegation graph: its uid, the
 * uids of the tasks of its chain (root first, itself last; itself alone when
 * the chain does not end with it) and the chain's digest (the certificate
 * extension's chainDigest, or the one a token states).
 */
export function delegationContextOf(
  task: { readonly metadata: { readonly uid?: string; readonly namespace?: string; readonly name: string } },
  links: readonly ChainLink[],
  digest: string = chainDigest(links).toString("hex"),
): DelegationContext {
  const uid = task.metadata.uid ?? "unknown";
  const taskUids = links.filter((l) => l.kind === "AgentTask").map((l) => l.uid || "unknown");
  const chainUids = taskUids.length > 0 && taskUids[taskUids.length - 1] === uid ? taskUids : [uid];
  return {
    taskUid: uid,
    namespace: task.metadata.namespace ?? "",
    name: task.metadata.name,
    chainUids,
    rootUid: chainUids[0]!,
    contextDigest: digest,
  };
}
