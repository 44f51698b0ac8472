import { bytesEqual, DerReader, integer, octetString, owned, sequence, TAG, utf8String } from "./der.ts";
import { X509Error } from "./errors.ts";

/**
 * The Custody delegation extension (DER, non-critical). ASN.1 module and
 * rationale: docs/certificate.md.
 *
 *   CustodyDelegation ::= SEQUENCE {
 *     version        INTEGER { v1(1) },
 *     taskUid        UTF8String (SIZE(1..128)),
 *     delegator      Principal,
 *     scope          SEQUENCE SIZE(1..64) OF UTF8String (SIZE(1..256)),
 *     chainDigest    OCTET STRING (SIZE(32)),
 *     chainDepth     INTEGER (0..2147483647),
 *     policyVersion  UTF8String (SIZE(1..128)),
 *     specDigest     OCTET STRING (SIZE(32)) }
 *
 *   Principal ::= SEQUENCE {
 *     kind  UTF8String -- "user" | "group" | "serviceaccount" | "workflow" | "agent"
 *     name  UTF8String (SIZE(1..640)),
 *     uid   UTF8String (SIZE(1..128)) OPTIONAL }
 */

export const DELEGATION_VERSION = 1;
export const PRINCIPAL_KINDS = ["user", "group", "serviceaccount", "workflow", "agent"] as const;
export type PrincipalKind = (typeof PRINCIPAL_KINDS)[number];

export interface Principal {
  readonly kind: PrincipalKind;
  readonly name: string;
  readonly uid?: string;
}

export interface DelegationInfo {
  /** metadata.uid of the AgentTask the SVID was minted for. */
  readonly taskUid: string;
  /** Who started the delegation chain (the human or workload at its root). */
  readonly delegator: Principal;
  /** Granted scope, as the grant strings of the shared scope grammar. */
  readonly scope: readonly string[];
  /** SHA-256 over the canonical delegation chain (32 bytes). */
  readonly chainDigest: Uint8Array;
  /** Number of delegation hops from the delegator to this task (0 = direct). */
  readonly chainDepth: number;
  /** Version of the policy that admitted the task. */
  readonly policyVersion: string;
  /** SHA-256 over the canonical AgentTask spec (32 bytes). */
  readonly specDigest: Uint8Array;
}

export const LIMITS = {
  taskUid: 128,
  // Room for `system:serviceaccount:<ns>:<name>` of the longest names the API accepts.
  principalName: 640,
  principalUid: 128,
  grant: 256,
  scopeGrants: 64,
  policyVersion: 128,
  digest: 32,
  chainDepth: 2 ** 31 - 1,
} as const;

const PREFIX = "delegation";
const fail = (field: string, rule: string): never => {
  throw new X509Error(`${PREFIX}.${field}`, rule);
};

function checkText(field: string, value: unknown, max: number): string {
  if (typeof value !== "string") return fail(field, "must be a string");
  if (value.length === 0) fail(field, "must not be empty");
  // Length in code points: the limits are about meaning, not bytes.
  const length = [...value].length;
  if (length > max) fail(field, `must be at most ${max} characters (got ${length})`);
  if (!value.isWellFormed()) fail(field, "must be well-formed Unicode (no lone surrogates)");
  return value;
}

function checkDigest(field: string, value: unknown): Uint8Array {
  if (!(value instanceof Uint8Array)) return fail(field, "must be a Uint8Array");
  if (value.length !== LIMITS.digest) fail(field, `must be exactly 32 bytes (SHA-256), got ${value.length}`);
  return value;
}

function checkKind(field: string, value: unknown): PrincipalKind {
  if (!(PRINCIPAL_KINDS as readonly unknown[]).includes(value)) {
    fail(field, `must be one of ${PRINCIPAL_KINDS.join("|")} (got ${JSON.stringify(value)})`);
  }
  return value as PrincipalKind;
}

function checkDepth(field: string, value: unknown): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0 || value > LIMITS.chainDepth) {
    fail(field, `must be an integer in 0..${LIMITS.chainDepth}`);
  }
  return value as number;
}

function checkScope(field: string, value: unknown): readonly string[] {
  if (!Array.isArray(value)) return fail(field, "must be an array of grants");
  if (value.length === 0 || value.length > LIMITS.scopeGrants) {
    fail(field, `must hold 1..${LIMITS.scopeGrants} grants (got ${value.length})`);
  }
  const seen = new Set<string>();
  value.forEach((grant, i) => {
    checkText(`${field}[${i}]`, grant, LIMITS.grant);
    if (seen.has(grant)) fail(`${field}[${i}]`, `duplicate grant ${JSON.stringify(grant)}`);
    seen.add(grant);
  });
  return value;
}

/** Encodes the extension value (the DER inside the extension's OCTET STRING). */
export function encodeDelegationExtension(info: DelegationInfo): Uint8Array {
  const d = info.delegator;
  if (typeof d !== "object" || d === null) fail("delegator", "must be an object");
  const principal = sequence(
    utf8String(checkKind("delegator.kind", d.kind)),
    utf8String(checkText("delegator.name", d.name, LIMITS.principalName)),
    ...(d.uid === undefined ? [] : [utf8String(checkText("delegator.uid", d.uid, LIMITS.principalUid))]),
  );
  return owned(
    sequence(
      integer(DELEGATION_VERSION),
      utf8String(checkText("taskUid", info.taskUid, LIMITS.taskUid)),
      principal,
      sequence(...checkScope("scope", info.scope).map(utf8String)),
      octetString(checkDigest("chainDigest", info.chainDigest)),
      integer(checkDepth("chainDepth", info.chainDepth)),
      utf8String(checkText("policyVersion", info.policyVersion, LIMITS.policyVersion)),
      octetString(checkDigest("specDigest", info.specDigest)),
    ),
  );
}

/**
 * Strict decode: exact DER, version 1, every size and vocabulary rule that the
 * encoder enforces, no trailing bytes. Errors name the field.
 */
export function decodeDelegationExtension(der: Uint8Array): DelegationInfo {
  const outer = new DerReader(der, PREFIX);
  const r = outer.enter(TAG.SEQUENCE, "");
  outer.finish();
  const version = r.smallUnsigned("version");
  if (version !== DELEGATION_VERSION) fail("version", `unsupported version ${version} (expected 1)`);
  const taskUid = checkText("taskUid", r.utf8("taskUid"), LIMITS.taskUid);

  const p = new DerReader(r.expect(TAG.SEQUENCE, "delegator").content, `${PREFIX}.delegator`);
  const kind = checkKind("delegator.kind", p.utf8("kind"));
  const name = checkText("delegator.name", p.utf8("name"), LIMITS.principalName);
  const uid = p.atEnd() ? undefined : checkText("delegator.uid", p.utf8("uid"), LIMITS.principalUid);
  p.finish();

  const s = new DerReader(r.expect(TAG.SEQUENCE, "scope").content, `${PREFIX}.scope`);
  const scope: string[] = [];
  while (!s.atEnd()) scope.push(s.utf8(`[${scope.length}]`));
  checkScope("scope", scope);

  const chainDigest = checkDigest("chainDigest", r.expect(TAG.OCTET_STRING, "chainDigest").content.slice());
  const chainDepth = r.smallUnsigned("chainDepth");
  const policyVersion = checkText("policyVersion", r.utf8("policyVersion"), LIMITS.policyVersion);
  const specDigest = checkDigest("specDigest", r.expect(TAG.OCTET_STRING, "specDigest").content.slice());
  r.finish();

  const delegator: Principal = uid === undefined ? { kind, name } : { kind, name, uid };
  return { taskUid, delegator, scope, chainDigest, chainDepth, policyVersion, specDigest };
}

/** Field-by-field equality (digests compared by value). */
export function delegationEquals(a: DelegationInfo, b: DelegationInfo): boolean {
  return (
    a.taskUid === b.taskUid &&
    a.delegator.kind === b.delegator.kind &&
    a.delegator.name === b.delegator.name &&
    a.delegator.uid === b.delegator.uid &&
    a.scope.length === b.scope.length &&
    a.scope.every((g, i) => g === b.scope[i]) &&
    bytesEqual(a.chainDigest, b.chainDigest) &&
    a.chainDepth === b.chainDepth &&
    a.policyVersion === b.policyVersion &&
    bytesEqual(a.specDigest, b.specDigest)
  );
}
