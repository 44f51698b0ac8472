/**
 * The provenance event model: CloudEvents 1.0 in structured JSON mode
 * (`application/cloudevents+json`), one event per task lifecycle transition,
 * with Custody extension attributes that chain, number and sign each event
 * (rules: docs/events.md).
 *
 * Every `data` names its delegation context (task UID, chain UIDs root
 * first, root UID and the context digest). Free-form context marked
 * sensitive never appears in clear: only as HMAC-SHA-256 digests under a
 * named salt, so an auditor holding the salt can confirm a value without the
 * stream disclosing it.
 */
import { createHash, createHmac } from "node:crypto";
import { z } from "zod";
import { ValidationError } from "../errors.ts";

export const SPEC_VERSION = "1.0";
/** Kafka record content type (structured mode): the whole record value is the event. */
export const STRUCTURED_CONTENT_TYPE = "application/cloudevents+json";
export const DATA_CONTENT_TYPE = "application/json";
/** `custodyprev` of the first event of a stream. */
export const GENESIS_HASH = "0".repeat(64);
/** CloudEvents `Integer` is a signed 32-bit integer; seq and epoch stay within it. */
export const MAX_INTEGER = 2 ** 31 - 1;

/** Policy reasons in an event: at most 64, each at most 1,024 characters. */
const MAX_REASONS = 64;
const MAX_REASON_LENGTH = 1024;

/** Reasons as an event may carry them (the policy gives them unbounded). */
export function eventReasons(reasons: readonly string[]): string[] {
  return reasons.slice(0, MAX_REASONS).map((r) => r.slice(0, MAX_REASON_LENGTH));
}

// ---------------------------------------------------------------- primitives

const HEX64 = /^[0-9a-f]{64}$/;
const DNS_LABEL = /^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?$/;
// RFC 3339 date-time (CloudEvents `Timestamp`).
const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})$/;
// Certificate serials as lowercase hex without leading 00 padding, at most 20 octets (RFC 5280).
const SERIAL = /^[0-9a-f]{1,40}$/;

export const hex64 = z.string().regex(HEX64, "must be 64 lowercase hex digits (SHA-256)");
const uid = z.string().min(1).max(128);
const dnsLabel = z.string().max(63).regex(DNS_LABEL, "must be a DNS label");
const timestamp = z.string().regex(RFC3339, "must be an RFC 3339 date-time");
const serial = z.string().regex(SERIAL, "must be a lowercase hex serial of at most 20 octets");
const text = (max: number) => z.string().min(1).max(max);
const grants = z.array(text(256)).min(1).max(64);
const spiffeId = z.string().min(10).max(2048).startsWith("spiffe://");
const keyId = z.string().regex(/^[A-Za-z0-9_-]{43}$/, "must be an RFC 7638 thumbprint");

/** Where an event sits in the delegation graph. */
export const delegationContext = z
  .strictObject({
    taskUid: uid,
    namespace: dnsLabel,
    name: dnsLabel,
    /** UIDs of the tasks from the root of the chain down to this task (root first, this task last). */
    chainUids: z.array(uid).min(1).max(64),
    rootUid: uid,
    /** SHA-256 of the canonical delegation chain: the certificate extension's chainDigest, in hex. */
    contextDigest: hex64,
  })
  .refine((c) => c.chainUids[0] === c.rootUid, { path: ["rootUid"], message: "must equal chainUids[0]" })
  .refine((c) => c.chainUids[c.chainUids.length - 1] === c.taskUid, {
    path: ["chainUids"],
    message: "must end with taskUid",
  });

/** Sensitive free-form values, each only as HMAC-SHA-256(salt, value) under the salt named by saltId. */
export const sensitiveDigests = z.strictObject({
  saltId: text(128),
  /** Field path of the sensitive value (e.g. `spec.context`, `labels.customer`) to its salted digest. */
  digests: z.record(text(256), hex64),
});

const userInfo = z.strictObject({
  username: text(256),
  uid: uid.optional(),
  groups: z.array(text(256)).max(256).optional(),
});

const principal = z.strictObject({
  kind: z.enum(["user", "group", "serviceaccount", "workflow", "agent"]),
  name: text(256),
  uid: uid.optional(),
});

const certificate = z.strictObject({
  serial,
  spiffeId,
  notBefore: timestamp,
  notAfter: timestamp,
  /** SHA-256 of the subject public key info (DER): a fingerprint, never the key. */
  publicKeySha256: hex64,
});

const base = { context: delegationContext, sensitive: sensitiveDigests.optional() };

// ---------------------------------------------------------- per-type data

export const EVENT_DATA_SCHEMAS = {
  "dev.custody.task.requested": z.strictObject({
    ...base,
    /** The authenticated requester, as the webhook's signed admission record names it. */
    requester: userInfo,
    /** The task's UID (the object admission created) and SHA-256 of the webhook's signed requester record. */
    admission: z.strictObject({ uid, recordDigest: hex64 }).optional(),
    agent: dnsLabel,
    /** The runtime context the task declared (spec.agent): recorded, not used for authorization. */
    model: z.strictObject({ provider: text(253), name: text(253), version: text(253) }).optional(),
    tools: z
      .array(z.strictObject({ name: text(253), version: text(253) }))
      .max(256)
      .optional(),
    scope: grants,
    ttl: text(32),
    /**
     * spec.agent.labels not marked sensitive (values up to the spec's 256
     * characters); sensitive ones go to `sensitive.digests` as `labels.<key>`.
     */
    labels: z.record(text(317), z.string().max(256)).optional(),
  }),
  "dev.custody.task.delegation.verified": z.strictObject({
    ...base,
    delegator: principal,
    depth: z.int().min(0).max(MAX_INTEGER),
    scope: grants,
  }),
  "dev.custody.task.delegation.refused": z.strictObject({ ...base, reason: text(128), message: text(1024) }),
  "dev.custody.task.policy.decided": z.strictObject({
    ...base,
    policyVersion: text(128),
    decision: z.enum(["allow", "deny"]),
    reasons: z.array(text(MAX_REASON_LENGTH)).max(MAX_REASONS),
    /** Where it ran: issuance (or renewal), or a re-evaluation after a policy changed. */
    stage: z.enum(["issuance", "renewal", "policy-change"]).optional(),
    /** The policies in force: kind/namespace/name@version. */
    policies: z.array(text(512)).max(64).optional(),
    maxTtl: text(32).optional(),
    dropped: grants.optional(),
  }),
  /** A policy change revoked the task's credential. */
  "dev.custody.task.policy.revoked": z.strictObject({
    ...base,
    policyVersion: text(128),
    serials: z.array(serial).max(1024),
    reasons: z.array(text(MAX_REASON_LENGTH)).min(1).max(MAX_REASONS),
  }),
  /** A decision of the decision endpoint (AuthZEN Access Evaluation). */
  "dev.custody.task.action.decided": z.strictObject({
    ...base,
    policyVersion: text(128),
    decision: z.enum(["allow", "deny"]),
    reasons: z.array(text(MAX_REASON_LENGTH)).max(MAX_REASONS),
    action: text(256),
    resource: z.strictObject({ type: text(256), id: text(1024) }),
    /** Who asked: the agent itself (mTLS), or a resource server (its authenticated name). */
    caller: z.strictObject({ kind: z.enum(["agent", "resource-server"]), name: text(512) }),
    /** How the agent's credential reached Custody. */
    credential: z.enum(["x509-svid", "jwt-svid"]),
    /**
     * Streams written before 2026-11 carried the context as a plain SHA-256
     * (kept readable); the context is now `sensitive.digests.context`.
     */
    contextSha256: hex64.optional(),
  }),
  /** What was done, as reported to the decision endpoint. */
  "dev.custody.task.action.performed": z.strictObject({
    ...base,
    action: text(256),
    resource: z.strictObject({ type: text(256), id: text(1024) }),
    outcome: text(64).optional(),
    reporter: z.strictObject({ kind: z.enum(["agent", "resource-server"]), name: text(512) }),
    /** The agent reported about itself: a claim, not an observation. */
    selfReported: z.boolean(),
    /** As in action.decided: older streams only; now `sensitive.digests.context`. */
    contextSha256: hex64.optional(),
  }),
  "dev.custody.task.issued": z.strictObject({ ...base, certificate }),
  "dev.custody.task.renewed": z.strictObject({ ...base, certificate, previousSerial: serial }),
  "dev.custody.task.issuance.abandoned": z.strictObject({ ...base, serial, reason: text(1024) }),
  "dev.custody.task.injected": z.strictObject({
    ...base,
    pod: z.strictObject({ namespace: dnsLabel, name: text(253), uid }),
    containers: z.array(text(253)).min(1).max(256),
    serial,
  }),
  "dev.custody.task.denied": z.strictObject({
    ...base,
    stage: z.enum(["admission", "delegation", "policy", "issuance"]),
    reason: text(128),
    message: text(1024),
  }),
  "dev.custody.task.expired": z.strictObject({ ...base, serial, notAfter: timestamp }),
  "dev.custody.task.revoked": z.strictObject({
    ...base,
    serials: z.array(serial).max(1024),
    reason: text(1024),
    /** Set when this revocation cascaded from revoking an ancestor task: that task's UID. */
    cascadeFromUid: uid.optional(),
  }),
  "dev.custody.task.deleted": z.strictObject({ ...base }),
  /** JWT-SVIDs minted for the task's audiences (ids and dates; never a token). */
  "dev.custody.task.jwtsvid.issued": z.strictObject({
    ...base,
    spiffeId,
    kid: keyId,
    issuedAt: timestamp,
    expiresAt: timestamp,
    tokens: z
      .array(z.strictObject({ audience: text(256), jti: uid }))
      .min(1)
      .max(32),
  }),
  /** An on-behalf-of token granted by token exchange (RFC 8693). */
  "dev.custody.task.token.exchanged": z.strictObject({
    ...base,
    audience: text(256),
    scope: grants,
    jti: uid,
    kid: keyId,
    expiresAt: timestamp,
    /** The delegator at the root of the chain: the token's sub. */
    subject: text(640),
    /** The agents in the token's act claims, current first. */
    actors: z.array(spiffeId).min(1).max(64),
    client: z.strictObject({ spiffeId, serial }),
    subjectTokenJti: uid,
  }),
  /**
   * A token exchange refused, with the OAuth error code. The context is
   * present when the request named a task Custody could verify.
   */
  "dev.custody.task.token.refused": z.strictObject({
    context: delegationContext.optional(),
    sensitive: sensitiveDigests.optional(),
    error: z.enum([
      "invalid_request",
      "invalid_client",
      "invalid_scope",
      "invalid_target",
      "unsupported_grant_type",
      "temporarily_unavailable",
      "server_error",
    ]),
    description: text(1024),
    audience: text(256).optional(),
    /** What the TLS layer verified, if anything. */
    client: z.strictObject({ spiffeId: spiffeId.optional(), serial: serial.optional() }).optional(),
    /** SHA-256 of the presented subject token: correlates without recording a credential. */
    subjectTokenSha256: hex64.optional(),
  }),
} as const;

export type EventType = keyof typeof EVENT_DATA_SCHEMAS;
export const EVENT_TYPES = Object.keys(EVENT_DATA_SCHEMAS) as readonly EventType[];
export type EventData<T extends EventType> = z.infer<(typeof EVENT_DATA_SCHEMAS)[T]>;
export type DelegationContext = z.infer<typeof delegationContext>;
export type SensitiveDigests = z.infer<typeof sensitiveDigests>;

// ---------------------------------------------------------------- envelope

/** What a caller supplies to append an event; the writer adds the rest. */
export interface EventInputOf<T extends EventType> {
  /** Unique per source, e.g. a UUIDv7 made by the caller (retries reuse it). */
  readonly id: string;
  /** e.g. `custody.dev/operator/<writer>`. */
  readonly source: string;
  readonly type: T;
  /** The task's SPIFFE ID, or `<namespace>/<name>` before it has one. */
  readonly subject: string;
  /** RFC 3339, from the caller's clock. */
  readonly time: string;
  readonly data: EventData<T>;
}
export type EventInput = { [T in EventType]: EventInputOf<T> }[EventType];

/** The Custody extension attributes (CloudEvents names: lowercase alphanumerics). */
export interface ChainAttributes {
  readonly custodystream: string;
  readonly custodyseq: number;
  readonly custodyepoch: number;
  readonly custodyprev: string;
  readonly custodyhash: string;
  readonly custodykid: string;
  /** Present on sealed events: it covers this event and, through custodyprev, the unsealed ones before it. */
  readonly custodysig?: string;
}

export interface CustodyEventOf<T extends EventType> extends EventInputOf<T>, ChainAttributes {
  readonly specversion: typeof SPEC_VERSION;
  readonly datacontenttype: typeof DATA_CONTENT_TYPE;
}
export type CustodyEvent = { [T in EventType]: CustodyEventOf<T> }[EventType];

export const STREAM_ID = /^[\x21-\x7e]{1,256}$/;
/** An RFC 7638 SHA-256 JWK thumbprint, base64url. */
export const KEY_ID = /^[A-Za-z0-9_-]{43}$/;
/** An ES256 signature (64 bytes, IEEE P1363 r||s), base64url. */
export const SIGNATURE = /^[A-Za-z0-9_-]{86}$/;

const seqNumber = z.int().min(1).max(MAX_INTEGER);
const epochNumber = z.int().min(0).max(MAX_INTEGER);

const inputAttributes = {
  id: text(256),
  source: text(1024),
  type: z.enum(EVENT_TYPES as [EventType, ...EventType[]]),
  subject: text(2048),
  time: timestamp,
};

/** The envelope as the verifier reads it: every attribute typed, `data` any JSON object. */
export const envelopeSchema = z.object({
  specversion: z.literal(SPEC_VERSION),
  ...inputAttributes,
  // Unknown types are allowed on read: a newer writer may define more.
  type: text(256),
  datacontenttype: z.literal(DATA_CONTENT_TYPE),
  custodystream: z.string().regex(STREAM_ID, "must be 1..256 printable ASCII characters"),
  custodyseq: seqNumber,
  custodyepoch: epochNumber,
  custodyprev: hex64,
  custodyhash: hex64,
  custodykid: z.string().regex(KEY_ID, "must be a base64url SHA-256 JWK thumbprint"),
  custodysig: z.string().regex(SIGNATURE, "must be a base64url ES256 signature").optional(),
  data: z.record(z.string(), z.unknown()),
});
export type Envelope = z.infer<typeof envelopeSchema>;

const inputSchema = z.strictObject({ ...inputAttributes, data: z.unknown() });

/**
 * Validates what a caller wants to append. Throws a ValidationError naming
 * the field (e.g. `data.context.rootUid`) and the rule.
 */
export function parseEventInput(input: unknown): EventInput {
  const envelope = inputSchema.safeParse(input);
  if (!envelope.success) throw issueToError(envelope.error.issues[0]!, "");
  const type = envelope.data.type;
  const data = EVENT_DATA_SCHEMAS[type].safeParse(envelope.data.data);
  if (!data.success) throw issueToError(data.error.issues[0]!, "data");
  return { ...envelope.data, data: data.data } as EventInput;
}

export function isEventType(value: string): value is EventType {
  return Object.hasOwn(EVENT_DATA_SCHEMAS, value);
}

// ------------------------------------------------------------ sensitive data

/** Salts shorter than this would make a dictionary attack on low-entropy values cheap. */
export const MIN_SALT_BYTES = 16;

/** A salt and the public name events cite it by (so an auditor knows which salt confirms a value). */
export interface ProvenanceSalt {
  readonly id: string;
  readonly key: Uint8Array;
}

/** The salt's id: a name derived from it that discloses nothing of it (SHA-256 is one-way). */
export function provenanceSalt(key: Uint8Array): ProvenanceSalt {
  if (key.byteLength < MIN_SALT_BYTES) {
    throw new ValidationError(
      "salt",
      "min-length",
      `salt: must be at least ${MIN_SALT_BYTES} bytes (rule min-length)`,
    );
  }
  const id = `salt-${createHash("sha256").update("custody provenance salt id\0").update(key).digest("hex").slice(0, 16)}`;
  return { id, key };
}

/** HMAC-SHA-256(salt, UTF-8 value) in lowercase hex. */
export function saltedDigest(salt: Uint8Array | string, value: string): string {
  const saltLength = typeof salt === "string" ? Buffer.byteLength(salt) : salt.byteLength;
  if (saltLength < MIN_SALT_BYTES) {
    throw new ValidationError(
      "salt",
      "min-length",
      `salt: must be at least ${MIN_SALT_BYTES} bytes (rule min-length)`,
    );
  }
  if (!value.isWellFormed()) {
    throw new ValidationError(
      "value",
      "well-formed-unicode",
      "value: must be well-formed Unicode (rule well-formed-unicode)",
    );
  }
  return createHmac("sha256", salt).update(value, "utf8").digest("hex");
}

/** Digests every sensitive field (path → clear value) under one salt. */
export function digestSensitive(
  salt: Uint8Array | string,
  saltId: string,
  fields: Readonly<Record<string, string>>,
): SensitiveDigests {
  const digests: Record<string, string> = {};
  for (const [path, value] of Object.entries(fields)) digests[path] = saltedDigest(salt, value);
  return { saltId, digests };
}

// ------------------------------------------------------------------ errors

function issueToError(issue: z.core.$ZodIssue, root: string): ValidationError {
  const path = issue.path.map((p) => (typeof p === "number" ? `[${p}]` : `.${String(p)}`)).join("");
  const field = (root + path).replace(/^\./, "") || root || "event";
  const missing = issue.code === "invalid_type" && issue.input === undefined;
  const rule = missing ? "required" : (RULES[issue.code] ?? issue.code);
  const detail = missing
    ? "is required"
    : issue.code === "unrecognized_keys"
      ? `unknown field(s) ${issue.keys.join(", ")}`
      : issue.message.replace(/^Invalid input: /, "");
  return new ValidationError(field, rule, `${field}: ${detail} (rule ${rule})`);
}

const RULES: Readonly<Record<string, string>> = {
  invalid_type: "type",
  invalid_value: "enum",
  invalid_format: "pattern",
  too_small: "min",
  too_big: "max",
  unrecognized_keys: "unknown-field",
  custom: "consistency",
};
