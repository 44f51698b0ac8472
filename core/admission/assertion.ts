/**
 * Delegation assertions: a JWT from a configured issuer saying "this
 * requester may create this very AgentTask on behalf of this delegator".
 * The webhook accepts one in the annotation `custody.dev/delegation-assertion`
 * as proof of a `spec.delegator` other than the requester; docs/delegation-assertions.md
 * is the user-facing description.
 *
 * This module is pure: the claim format, its checks (given a payload whose
 * signature the jose shell, webhook/assertions.ts, has already verified),
 * and the schema of the issuers configuration. No I/O and no clock: callers
 * pass `now`.
 *
 * The claims set:
 *
 *   iss      a configured issuer (selects the keys, audience, lifetime and kinds)
 *   sub      the delegator's name (equal to custody.delegator.name)
 *   aud      string or array containing the issuer's audience (default "custody.dev")
 *   iat, exp required NumericDates; 0 < exp - iat <= maxLifetimeSeconds (default 600, cap 3600)
 *   nbf      optional NumericDate
 *   jti      required, 1..128 printable ASCII without spaces; accepted once per issuer
 *   custody  { delegator: {kind, name, namespace?}, requester, namespace, name, specDigest }
 *
 * The private claim binds the assertion to one request: who sends it (the
 * username exactly as the API server authenticated it), which object (the
 * task's namespace and name) and which identity (identitySpecDigest of the
 * spec as admission sees it, i.e. after the API server applied defaults such
 * as ttl). So a leaked assertion cannot be used by someone else, for another
 * task, or for the same task name with a wider scope.
 */
import { createPublicKey, type JsonWebKey, type KeyObject } from "node:crypto";
import { z } from "zod";
import {
  type AgentTaskSpec,
  DELEGATOR_KINDS,
  type Delegator,
  type DelegatorKind,
  formatFieldPath,
} from "../api/v1alpha1.ts";
import { identitySpecDigest } from "../delegation.ts";
import { ValidationError } from "../errors.ts";

import { DELEGATION_ASSERTION_ANNOTATION } from "./record.ts";

export { DELEGATION_ASSERTION_ANNOTATION };
/** The field every assertion error names (plus `.<claim>` when one claim is at fault). */
export const ASSERTION_FIELD = `metadata.annotations[${DELEGATION_ASSERTION_ANNOTATION}]`;

export const DEFAULT_ASSERTION_AUDIENCE = "custody.dev";
export const DEFAULT_MAX_LIFETIME_SECONDS = 600;
/** Hard cap on an assertion's lifetime: it is a one-shot proof, not a session. */
export const MAX_LIFETIME_CAP_SECONDS = 3600;
/**
 * Clock skew tolerated between the issuer, the webhook replicas and the
 * sweeping replica, applied to exp, nbf and iat alike (as jose's
 * clockTolerance applies it, so both layers agree on every boundary).
 */
export const CLOCK_SKEW_SECONDS = 60;
export const MAX_JTI_LENGTH = 128;
/** Upper bound on an assertion token we look at (8 KiB): annotations are small. */
export const MAX_ASSERTION_LENGTH = 8 * 1024;
export const MAX_ISSUER_LENGTH = 512;
export const MAX_ISSUERS = 32;

/** Asymmetric JWS algorithms an issuer may be configured with. */
export const ASSERTION_ALGORITHMS = [
  "ES256",
  "ES384",
  "ES512",
  "RS256",
  "RS384",
  "RS512",
  "PS256",
  "PS384",
  "PS512",
  "EdDSA",
  "Ed25519",
] as const;
export type AssertionAlgorithm = (typeof ASSERTION_ALGORITHMS)[number];
export const DEFAULT_ASSERTION_ALGORITHMS: readonly AssertionAlgorithm[] = [
  "ES256",
  "RS256",
  "PS256",
  "EdDSA",
];

/**
 * Accepted `typ` header values (compared case-insensitively, an
 * `application/` prefix ignored). `typ` is optional; when present it must say
 * "a JWT" or "a Custody delegation assertion", so a differently typed token
 * of the same issuer (an RFC 9068 access token `at+jwt`, a DPoP proof) is not
 * taken for an assertion.
 */
export const ASSERTION_TYPES = ["jwt", "custody-delegation+jwt"] as const;

const PRINTABLE = /^[!-~]+$/;
const HEX_DIGEST = /^[0-9a-f]{64}$/;

// ---------------------------------------------------------------- issuers configuration

/** Algorithms a public key can verify, by its type (and curve or size). */
function algorithmsForKey(key: KeyObject): { algorithms: AssertionAlgorithm[]; problem?: string } {
  const details = key.asymmetricKeyDetails ?? {};
  switch (key.asymmetricKeyType) {
    case "rsa":
    case "rsa-pss": {
      // jose refuses RSA keys under 2048 bits at verification; say so at start instead.
      if ((details.modulusLength ?? 0) < 2048)
        return { algorithms: [], problem: "an RSA key under 2048 bits" };
      const pss: AssertionAlgorithm[] = ["PS256", "PS384", "PS512"];
      return { algorithms: key.asymmetricKeyType === "rsa" ? ["RS256", "RS384", "RS512", ...pss] : pss };
    }
    case "ec":
      switch (details.namedCurve) {
        case "prime256v1":
          return { algorithms: ["ES256"] };
        case "secp384r1":
          return { algorithms: ["ES384"] };
        case "secp521r1":
          return { algorithms: ["ES512"] };
        default:
          return { algorithms: [], problem: `an EC key on curve ${details.namedCurve ?? "?"}` };
      }
    case "ed25519":
      return { algorithms: ["EdDSA", "Ed25519"] };
    default:
      return { algorithms: [], problem: `a ${key.asymmetricKeyType ?? "secret"} key` };
  }
}

/** JWK members that only private or symmetric keys carry. */
const PRIVATE_JWK_MEMBERS = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] as const;

const issue = (ctx: z.RefinementCtx, rule: string, message: string, path: PropertyKey[] = []) =>
  ctx.addIssue({ code: "custom", message, path, params: { rule } });

const algorithm = z
  .string()
  .superRefine((alg, ctx) => {
    if (alg.toLowerCase() === "none") {
      issue(ctx, "alg-none", `"none" is never accepted: an unsigned assertion proves nothing`);
    } else if (/^HS\d+$/i.test(alg)) {
      issue(
        ctx,
        "alg-symmetric",
        `${alg} uses a shared secret, so whoever can verify could also forge; ` +
          `use an asymmetric algorithm (${DEFAULT_ASSERTION_ALGORITHMS.join(", ")})`,
      );
    }
  })
  .pipe(z.enum(ASSERTION_ALGORITHMS, { error: `must be one of ${ASSERTION_ALGORITHMS.join(", ")}` }));

const jwk = z.record(z.string(), z.unknown()).superRefine((key, ctx) => {
  const secret = PRIVATE_JWK_MEMBERS.filter((m) => key[m] !== undefined);
  if (secret.length > 0) {
    issue(
      ctx,
      "public-only",
      `has private or secret members (${secret.join(", ")}): give only the issuer's public keys`,
    );
    return;
  }
  if (!["EC", "RSA", "OKP"].includes(String(key.kty))) {
    issue(ctx, "kty", "must have kty EC, RSA or OKP (a public signature key)");
    return;
  }
  try {
    createPublicKey({ key: key as JsonWebKey, format: "jwk" });
  } catch {
    issue(ctx, "jwk", `is not a valid ${String(key.kty)} public key`);
  }
});

const jwkSet = z.object({ keys: z.array(jwk).min(1).max(64) });

const httpsUrl = z
  .string()
  .max(2048)
  .superRefine((text, ctx) => {
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      issue(ctx, "url", "must be an absolute https:// URL");
      return;
    }
    if (url.protocol !== "https:") {
      issue(
        ctx,
        "https",
        "must be an https:// URL: keys fetched over plain HTTP could be replaced in transit",
      );
    } else if (url.username || url.password) {
      issue(ctx, "credentials", "must not carry credentials (user:password@)");
    } else if (url.hash) {
      issue(ctx, "fragment", "must not have a #fragment");
    }
  });

const publicKeyPem = z
  .string()
  .max(16 * 1024)
  .superRefine((pem, ctx) => {
    // createPublicKey would happily derive a public key from a private one:
    // refuse private keys outright, the webhook must not hold a signing key.
    if (/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(pem)) {
      issue(ctx, "public-only", "is a private key: give the issuer's public key (BEGIN PUBLIC KEY)");
    } else if (!/-----BEGIN PUBLIC KEY-----/.test(pem)) {
      issue(ctx, "spki-pem", "must be a PEM SubjectPublicKeyInfo (-----BEGIN PUBLIC KEY-----)");
    } else {
      try {
        createPublicKey({ key: pem, format: "pem" });
      } catch {
        issue(ctx, "spki-pem", "is not a readable public key");
      }
    }
  });

const printable = (max: number) =>
  z.string().min(1).max(max).regex(PRINTABLE, { error: "must be printable ASCII without spaces" });

export const AssertionIssuerSchema = z
  .strictObject({
    issuer: printable(MAX_ISSUER_LENGTH).describe("The `iss` value the issuer puts in its assertions."),
    audience: printable(256)
      .default(DEFAULT_ASSERTION_AUDIENCE)
      .describe("An `aud` value the assertions must carry."),
    jwksUri: httpsUrl.optional().describe("https URL of the issuer's JWK Set, fetched and cached."),
    jwks: jwkSet.optional().describe("The issuer's JWK Set inline (public keys only)."),
    publicKeyPem: publicKeyPem.optional().describe("The issuer's single public key, PEM SPKI."),
    algorithms: z
      .array(algorithm)
      .min(1)
      .max(ASSERTION_ALGORITHMS.length)
      .default([...DEFAULT_ASSERTION_ALGORITHMS])
      .superRefine(unique("algorithm")),
    maxLifetimeSeconds: z
      .number()
      .int()
      .min(1)
      .max(MAX_LIFETIME_CAP_SECONDS)
      .default(DEFAULT_MAX_LIFETIME_SECONDS)
      .describe("Longest exp - iat accepted."),
    kinds: z
      .array(z.enum(DELEGATOR_KINDS))
      .min(1)
      .max(DELEGATOR_KINDS.length)
      .default([...DELEGATOR_KINDS])
      .superRefine(unique("kind"))
      .describe("Delegator kinds this issuer may assert, e.g. only Workflow for a workflow engine."),
  })
  .superRefine((cfg, ctx) => {
    const sources = (["jwksUri", "jwks", "publicKeyPem"] as const).filter((k) => cfg[k] !== undefined);
    if (sources.length !== 1) {
      issue(
        ctx,
        "key-source",
        sources.length === 0
          ? "needs exactly one key source: jwksUri, jwks or publicKeyPem"
          : `has ${sources.join(" and ")}: give exactly one key source`,
      );
      return;
    }
    // A key no configured algorithm can use would refuse every assertion:
    // say so at start, naming the key, rather than at the first request.
    // (zod runs this even when a field failed: an unreadable key was reported there.)
    const keys: Array<{ path: PropertyKey[]; key: KeyObject; alg?: unknown }> = [];
    const read = (path: PropertyKey[], load: () => KeyObject, alg?: unknown) => {
      try {
        keys.push({ path, key: load(), alg });
      } catch {
        // reported by the field's own check
      }
    };
    if (cfg.publicKeyPem !== undefined) {
      const pem = cfg.publicKeyPem;
      read(["publicKeyPem"], () => createPublicKey({ key: pem, format: "pem" }));
    }
    cfg.jwks?.keys.forEach((k, i) => {
      read(["jwks", "keys", i], () => createPublicKey({ key: k as JsonWebKey, format: "jwk" }), k.alg);
    });
    for (const { path, key, alg } of keys) {
      const fits = algorithmsForKey(key);
      if (fits.problem) {
        issue(ctx, "key-type", `is ${fits.problem}, which no supported algorithm verifies`, path);
        return;
      }
      const usable = fits.algorithms.filter(
        (a) => cfg.algorithms.includes(a) && (alg === undefined || alg === a),
      );
      if (usable.length === 0) {
        issue(
          ctx,
          "algorithm-key-mismatch",
          `fits ${typeof alg === "string" ? alg : fits.algorithms.join(", ")}, ` +
            `but algorithms allows only ${cfg.algorithms.join(", ")}`,
          path,
        );
        return;
      }
    }
  });

export type AssertionIssuer = z.output<typeof AssertionIssuerSchema>;
export type AssertionIssuerInput = z.input<typeof AssertionIssuerSchema>;

export const AssertionIssuersSchema = z
  .array(AssertionIssuerSchema)
  .max(MAX_ISSUERS)
  .superRefine((list, ctx) => {
    const seen = new Map<string, number>();
    list.forEach((cfg, i) => {
      const first = seen.get(cfg.issuer);
      if (first !== undefined)
        issue(ctx, "duplicate", `issuer ${JSON.stringify(cfg.issuer)} duplicates [${first}]`, [i, "issuer"]);
      else seen.set(cfg.issuer, i);
    });
  });

function unique(what: string) {
  return (values: readonly string[], ctx: z.RefinementCtx) => {
    const seen = new Set<string>();
    values.forEach((v, i) => {
      if (seen.has(v)) issue(ctx, "duplicate", `${what} ${v} is listed twice`, [i]);
      seen.add(v);
    });
  };
}

/**
 * Validates the issuers configuration (the parsed JSON of
 * CUSTODY_ASSERTION_ISSUERS or of the file it names) and applies defaults.
 * Throws a ValidationError whose field is e.g. `CUSTODY_ASSERTION_ISSUERS[0].jwksUri`.
 */
export function parseAssertionIssuers(value: unknown, root = "CUSTODY_ASSERTION_ISSUERS"): AssertionIssuer[] {
  const result = AssertionIssuersSchema.safeParse(value);
  if (result.success) return result.data;
  const first = result.error.issues[0]!;
  const field = formatFieldPath(root, first.path);
  const rule = configRule(first, value);
  const message =
    rule === "required"
      ? "is required"
      : rule === "unknown-field"
        ? `has an unknown field ${(first as { keys?: string[] }).keys?.map((k) => JSON.stringify(k)).join(", ")}`
        : first.message.replace(/^Invalid input: /, "");
  return fail(field, rule, message);
}

/** Same, from JSON text. */
export function parseAssertionIssuersJson(
  text: string,
  root = "CUSTODY_ASSERTION_ISSUERS",
): AssertionIssuer[] {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return fail(root, "json", "is not valid JSON (expected a list of issuers)");
  }
  return parseAssertionIssuers(value, root);
}

function configRule(i: z.core.$ZodIssue, input: unknown): string {
  switch (i.code) {
    case "custom":
      return typeof i.params?.rule === "string" ? i.params.rule : "custom";
    case "invalid_type": {
      let v: unknown = input;
      for (const k of i.path)
        v = v !== null && typeof v === "object" ? (v as Record<PropertyKey, unknown>)[k] : v;
      return v === undefined ? "required" : "type";
    }
    case "unrecognized_keys":
      return "unknown-field";
    case "too_big":
      return i.origin === "string" ? "max-length" : i.origin === "array" ? "max-items" : "maximum";
    case "too_small":
      return i.origin === "string" ? "min-length" : i.origin === "array" ? "min-items" : "minimum";
    case "invalid_format":
      return i.format === "regex" ? "pattern" : i.format;
    case "invalid_value":
      return "enum";
    default:
      return i.code;
  }
}

// ---------------------------------------------------------------- claims

/** The private claim `custody`. */
export interface CustodyClaim {
  delegator: { kind: DelegatorKind; name: string; namespace?: string };
  /** The requester's username exactly as Kubernetes authenticated it. */
  requester: string;
  namespace: string;
  name: string;
  /** identitySpecDigest(spec), lowercase hex. */
  specDigest: string;
}

export interface AssertionCheckContext {
  issuer: AssertionIssuer;
  /** The verified protected header (alg, typ), when the caller has it. */
  header?: { alg?: unknown; typ?: unknown };
  /** AdmissionReview request.userInfo.username. */
  requester: string;
  namespace: string;
  name: string;
  /** The task's spec as admission sees it (after API server defaults). */
  spec: AgentTaskSpec | Record<string, unknown>;
  /** Milliseconds since the epoch. */
  now: number;
}

export interface CheckedAssertion {
  issuer: string;
  subject: string;
  jti: string;
  delegator: Delegator;
  /** The iat and exp claims. */
  issuedAt: Date;
  expiresAt: Date;
  /**
   * Until when some replica may still accept this assertion: exp plus the
   * clock skew. Its jti must be remembered at least this long.
   */
  acceptedUntil: Date;
}

/**
 * Checks a signature-verified assertion's header and claims against the
 * issuer's configuration and the request. Returns what the signed record
 * keeps; throws ValidationError(field, rule) naming the first claim at fault.
 */
export function checkAssertionClaims(payload: unknown, ctx: AssertionCheckContext): CheckedAssertion {
  const cfg = ctx.issuer;
  const header = ctx.header ?? {};
  if (header.alg !== undefined && !(cfg.algorithms as readonly unknown[]).includes(header.alg)) {
    fail(`${ASSERTION_FIELD}.header.alg`, "alg", `must be one of ${cfg.algorithms.join(", ")}`);
  }
  if (header.typ !== undefined) {
    const typ = typeof header.typ === "string" ? header.typ.toLowerCase().replace(/^application\//, "") : "";
    if (!(ASSERTION_TYPES as readonly string[]).includes(typ))
      fail(`${ASSERTION_FIELD}.header.typ`, "typ", `when present must be JWT or custody-delegation+jwt`);
  }
  if (payload === null || typeof payload !== "object" || Array.isArray(payload))
    fail(ASSERTION_FIELD, "payload", "has a payload that is not a JSON object");
  const p = payload as Record<string, unknown>;

  // Issuer first: every other rule depends on which issuer's configuration applies.
  if (p.iss !== cfg.issuer)
    claimFail("iss", "issuer", `must be ${JSON.stringify(cfg.issuer)}, the issuer whose key signed it`);

  // Time: required NumericDates, compared in whole seconds like jose does.
  const iat = numericDate(p, "iat", true)!;
  const exp = numericDate(p, "exp", true)!;
  const nbf = numericDate(p, "nbf", false);
  const nowSec = Math.floor(ctx.now / 1000);
  if (exp <= nowSec - CLOCK_SKEW_SECONDS)
    claimFail("exp", "expired", `expired at ${isoSeconds(exp)}: ask the issuer for a fresh assertion`);
  if (iat > nowSec + CLOCK_SKEW_SECONDS)
    claimFail("iat", "issued-in-future", `is ${isoSeconds(iat)}, in the future: check the issuer's clock`);
  if (nbf !== undefined && nbf > nowSec + CLOCK_SKEW_SECONDS)
    claimFail("nbf", "not-yet-valid", `is ${isoSeconds(nbf)}: the assertion is not valid yet`);
  if (exp <= iat) claimFail("exp", "lifetime", "must be after iat");
  if (exp - iat > cfg.maxLifetimeSeconds)
    claimFail(
      "exp",
      "max-lifetime",
      `gives a lifetime of ${exp - iat} s; issuer ${JSON.stringify(cfg.issuer)} allows at most ` +
        `${cfg.maxLifetimeSeconds} s (assertions are single-use proofs that live minutes)`,
    );

  const aud = p.aud;
  const audiences = typeof aud === "string" ? [aud] : Array.isArray(aud) ? aud : undefined;
  if (audiences === undefined || audiences.length === 0 || !audiences.every((a) => typeof a === "string"))
    claimFail(
      "aud",
      "audience",
      `must be a string or a list of strings containing ${JSON.stringify(cfg.audience)}`,
    );
  if (!audiences.includes(cfg.audience))
    claimFail(
      "aud",
      "audience",
      `must contain ${JSON.stringify(cfg.audience)}: the assertion is meant for another audience`,
    );

  const jti = p.jti;
  if (typeof jti !== "string" || jti.length === 0)
    claimFail("jti", "jti", "is required: a unique id that makes the assertion single-use");
  if (jti.length > MAX_JTI_LENGTH || !PRINTABLE.test(jti))
    claimFail("jti", "jti", `must be 1..${MAX_JTI_LENGTH} printable ASCII characters without spaces`);

  if (typeof p.sub !== "string" || p.sub.length === 0)
    claimFail("sub", "subject", "is required: the delegator's name");

  const custody = p.custody;
  if (custody === null || typeof custody !== "object" || Array.isArray(custody))
    claimFail("custody", "required", "is required: {delegator, requester, namespace, name, specDigest}");
  const c = custody as Record<string, unknown>;
  const d = c.delegator as Record<string, unknown> | null | undefined;
  if (d === null || typeof d !== "object" || Array.isArray(d))
    claimFail("custody.delegator", "required", "is required: {kind, name, namespace?}");
  if (!(DELEGATOR_KINDS as readonly unknown[]).includes(d.kind))
    claimFail("custody.delegator.kind", "enum", `must be one of ${DELEGATOR_KINDS.join(", ")}`);
  if (typeof d.name !== "string" || d.name.length === 0)
    claimFail("custody.delegator.name", "required", "is required");
  if (d.namespace !== undefined && typeof d.namespace !== "string")
    claimFail("custody.delegator.namespace", "type", "must be a string");
  const asserted = d as { kind: DelegatorKind; name: string; namespace?: string };

  if (!cfg.kinds.includes(asserted.kind))
    claimFail(
      "custody.delegator.kind",
      "kind-not-allowed",
      `is ${asserted.kind}, but issuer ${JSON.stringify(cfg.issuer)} may assert only ${cfg.kinds.join(", ")}`,
    );
  const declared = (ctx.spec as Record<string, unknown>).delegator as
    | { kind?: unknown; name?: unknown; namespace?: unknown }
    | undefined;
  if (declared === undefined || declared === null)
    claimFail(
      "custody.delegator",
      "delegator",
      "proves a delegator, but the task has no spec.delegator: declare the delegator the assertion names",
    );
  if (
    declared.kind !== asserted.kind ||
    declared.name !== asserted.name ||
    declared.namespace !== asserted.namespace
  )
    claimFail(
      "custody.delegator",
      "delegator",
      `asserts ${describe(asserted)}, but spec.delegator is ${describe(declared)}`,
    );
  if (p.sub !== asserted.name)
    claimFail("sub", "subject", `must equal custody.delegator.name ${JSON.stringify(asserted.name)}`);

  if (c.requester !== ctx.requester)
    claimFail(
      "custody.requester",
      "requester",
      `is bound to ${quote(c.requester)}, but this request comes from ${JSON.stringify(ctx.requester)}: ` +
        "an assertion is usable only by the requester it names",
    );
  if (c.namespace !== ctx.namespace)
    claimFail(
      "custody.namespace",
      "namespace",
      `is ${quote(c.namespace)}, but the task is in ${JSON.stringify(ctx.namespace)}`,
    );
  if (c.name !== ctx.name)
    claimFail(
      "custody.name",
      "name",
      `is ${quote(c.name)}, but the task is named ${JSON.stringify(ctx.name)}`,
    );
  if (typeof c.specDigest !== "string" || !HEX_DIGEST.test(c.specDigest))
    claimFail(
      "custody.specDigest",
      "spec-digest",
      "must be the lowercase hex SHA-256 of the identity-defining spec",
    );
  if (c.specDigest !== identitySpecDigest(ctx.spec as Record<string, unknown>))
    claimFail(
      "custody.specDigest",
      "spec-digest",
      "does not match the task's identity-defining spec (agent, delegator, scope, parentRef, " +
        "serviceAccountName, ttl, deadline, audiences, after defaults): the assertion was made for another spec",
    );

  return {
    issuer: cfg.issuer,
    subject: p.sub as string,
    jti,
    delegator: {
      kind: asserted.kind,
      name: asserted.name,
      ...(asserted.namespace !== undefined ? { namespace: asserted.namespace } : {}),
    },
    issuedAt: new Date(iat * 1000),
    expiresAt: new Date(exp * 1000),
    acceptedUntil: new Date((exp + CLOCK_SKEW_SECONDS) * 1000),
  };
}

function numericDate(p: Record<string, unknown>, claim: string, required: boolean): number | undefined {
  const v = p[claim];
  if (v === undefined) {
    if (required) claimFail(claim, "required", "is required (a NumericDate, seconds since the epoch)");
    return undefined;
  }
  if (typeof v !== "number" || !Number.isFinite(v))
    claimFail(claim, "type", "must be a NumericDate (a number)");
  return v;
}

const isoSeconds = (sec: number): string => {
  const d = new Date(sec * 1000);
  return Number.isNaN(d.getTime()) ? String(sec) : d.toISOString().replace(/\.\d{3}Z$/, "Z");
};

/** Quotes a claim value for a message, bounded: claims come from the token's author. */
function quote(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 160 ? `${s.slice(0, 157)}...` : s;
}

function describe(d: { kind?: unknown; name?: unknown; namespace?: unknown } | undefined): string {
  if (!d) return "absent";
  return `${quote(d.kind)} ${quote(d.name)}${d.namespace !== undefined ? ` in namespace ${quote(d.namespace)}` : ""}`;
}

function claimFail(claim: string, rule: string, message: string): never {
  return fail(`${ASSERTION_FIELD}.${claim}`, rule, message);
}

function fail(field: string, rule: string, message: string): never {
  throw new ValidationError(field, rule, `${field}: ${message} (rule ${rule})`);
}
