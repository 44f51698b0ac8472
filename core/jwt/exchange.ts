/**
 * OAuth 2.0 Token Exchange (RFC 8693) for on-behalf-of tokens: an agent
 * presents its JWT-SVID (aud: Custody's issuer) over mutual TLS with its
 * X.509-SVID and gets a short JWT access token (RFC 9068, typ at+jwt) for one
 * of its task's audiences, in which `sub` is the principal at the root of the
 * proven chain and nested `act` claims name the agents, current first.
 *
 * Pure: the verified client certificate, the task's current state, the keys
 * and the clock are passed in. Every refusal is an ExchangeError carrying the
 * RFC 6749 / 8693 error code and a description safe to return and record
 * (it never echoes a token).
 */
import { type JWTPayload, errors as joseErrors, jwtVerify, SignJWT } from "jose";
import { z } from "zod";
import { ValidationError } from "../errors.ts";
import { formatGrant, type Grant, scopeIsSubset, validateScope } from "../scope.ts";
import type { JwtAlgorithm, JwtKey } from "./keys.ts";
import { type ChainHop, type CustodyClaim, MAX_OBO_TTL_MS, tokenExpiry } from "./svid.ts";

export const TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange";
export const JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt";
export const ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token";
/** Longest subject token we parse at all. */
export const MAX_TOKEN_LENGTH = 16 * 1024;

export type ExchangeErrorCode =
  | "invalid_request"
  | "invalid_client"
  | "invalid_scope"
  | "invalid_target"
  | "unsupported_grant_type"
  | "temporarily_unavailable"
  | "server_error";

export class ExchangeError extends Error {
  readonly error: ExchangeErrorCode;
  /** HTTP status: 401 for client authentication, 503 when unavailable, 500 on a fault, else 400. */
  readonly status: number;
  constructor(error: ExchangeErrorCode, description: string) {
    super(description);
    this.name = "ExchangeError";
    this.error = error;
    this.status =
      error === "invalid_client"
        ? 401
        : error === "temporarily_unavailable"
          ? 503
          : error === "server_error"
            ? 500
            : 400;
  }
}

const refuse = (code: ExchangeErrorCode, description: string): never => {
  throw new ExchangeError(code, description);
};

// ---------------------------------------------------------------- request

export interface ExchangeRequest {
  readonly subjectToken: string;
  readonly audience: string;
  /** Requested grants; undefined asks for the task's whole scope. */
  readonly scope: Grant[] | undefined;
}

/**
 * Checks the form parameters (application/x-www-form-urlencoded). A repeated
 * parameter, an unknown token type or an actor token is refused: the actor
 * is always the agent that authenticated over mutual TLS.
 */
export function parseExchangeRequest(form: URLSearchParams): ExchangeRequest {
  for (const name of new Set(form.keys())) {
    if (form.getAll(name).length > 1)
      refuse("invalid_request", `parameter ${name} is repeated (RFC 6749 §3.2)`);
  }
  const grantType = form.get("grant_type");
  if (grantType === null) refuse("invalid_request", "grant_type is required");
  if (grantType !== TOKEN_EXCHANGE_GRANT) {
    refuse("unsupported_grant_type", `grant_type must be ${TOKEN_EXCHANGE_GRANT}`);
  }
  const subjectToken = form.get("subject_token");
  if (!subjectToken) refuse("invalid_request", "subject_token is required");
  if (subjectToken!.length > MAX_TOKEN_LENGTH) {
    refuse("invalid_request", `subject_token is longer than ${MAX_TOKEN_LENGTH} characters`);
  }
  const subjectType = form.get("subject_token_type");
  if (subjectType !== JWT_TOKEN_TYPE) {
    refuse("invalid_request", `subject_token_type must be ${JWT_TOKEN_TYPE} (the agent's JWT-SVID)`);
  }
  if (form.has("actor_token") || form.has("actor_token_type")) {
    refuse(
      "invalid_request",
      "actor_token is not accepted: the actor is the agent authenticated by its client certificate",
    );
  }
  const requested = form.get("requested_token_type");
  if (requested !== null && requested !== ACCESS_TOKEN_TYPE && requested !== JWT_TOKEN_TYPE) {
    refuse("invalid_request", `requested_token_type must be ${ACCESS_TOKEN_TYPE} or ${JWT_TOKEN_TYPE}`);
  }
  if (form.has("resource")) refuse("invalid_target", "resource is not supported: name the audience instead");
  const audience = form.get("audience");
  if (!audience) refuse("invalid_target", "audience is required: one of the task's spec.audiences");
  let scope: Grant[] | undefined;
  const scopeText = form.get("scope");
  if (scopeText !== null) {
    try {
      scope = validateScope(scopeText.split(" ").filter(Boolean), "scope");
    } catch (e) {
      if (!(e instanceof ValidationError)) throw e;
      refuse("invalid_scope", e.message);
    }
  }
  return { subjectToken: subjectToken!, audience: audience!, scope };
}

// ---------------------------------------------------------------- subject token

const hop = z.strictObject({
  kind: z.enum(["user", "group", "serviceaccount", "workflow", "agent"]),
  name: z.string().min(1).max(640),
  spiffeId: z.string().startsWith("spiffe://").max(2048).optional(),
});
const custodySchema = z.strictObject({
  taskUid: z.string().min(1).max(128),
  policyVersion: z.string().min(1).max(128),
  chainDigest: z.string().regex(/^[0-9a-f]{64}$/),
  chain: z.array(hop).min(2).max(64),
});

export interface VerifiedSubject {
  readonly sub: string;
  readonly jti: string;
  readonly exp: number;
  readonly kid: string;
  readonly custody: CustodyClaim;
}

export interface SubjectTokenOptions {
  readonly issuer: string;
  /** The verification keys by kid: every published key. */
  readonly keyFor: (kid: string) => JwtKey | undefined;
  /** Algorithms accepted: those of the published keys, never `none` or HMAC. */
  readonly algorithms: readonly JwtAlgorithm[];
  readonly now: number;
}

/**
 * Verifies the agent's JWT-SVID as a subject token: signed by one of
 * Custody's published keys with an allowed asymmetric algorithm, typ JWT,
 * issued by this issuer, for this issuer (aud), not expired, with a
 * well-formed `custody` claim whose chain ends at `sub`.
 */
export async function verifySubjectToken(token: string, opts: SubjectTokenOptions): Promise<VerifiedSubject> {
  let kid = "";
  let payload: JWTPayload;
  try {
    const result = await jwtVerify(
      token,
      (header) => {
        kid = typeof header.kid === "string" ? header.kid : "";
        const key = opts.keyFor(kid);
        if (!key)
          throw new ExchangeError("invalid_request", "subject_token: kid names no key of this issuer");
        if (header.alg !== key.alg) {
          throw new ExchangeError(
            "invalid_request",
            `subject_token: alg ${String(header.alg)} is not the key's ${key.alg}`,
          );
        }
        return key.publicKey;
      },
      {
        issuer: opts.issuer,
        audience: opts.issuer,
        algorithms: [...opts.algorithms],
        typ: "JWT",
        requiredClaims: ["sub", "exp", "iat", "jti", "aud", "iss"],
        currentDate: new Date(opts.now),
        clockTolerance: 0,
      },
    );
    payload = result.payload;
  } catch (err) {
    if (err instanceof ExchangeError) throw err;
    return refuse("invalid_request", `subject_token: ${describeJoseError(err)}`);
  }
  const custody = custodySchema.safeParse(payload.custody);
  if (!custody.success) refuse("invalid_request", "subject_token: the custody claim is missing or malformed");
  const claim = custody.data!;
  const last = claim.chain[claim.chain.length - 1]!;
  if (last.kind !== "agent" || last.spiffeId !== payload.sub) {
    refuse("invalid_request", "subject_token: the custody chain does not end at the token's sub");
  }
  return {
    sub: payload.sub!,
    jti: payload.jti!,
    exp: payload.exp! * 1000,
    kid,
    custody: claim as CustodyClaim,
  };
}

/** What jose found wrong, in words that never include the token. */
export function describeJoseError(err: unknown): string {
  if (err instanceof joseErrors.JWTExpired) return "has expired";
  if (err instanceof joseErrors.JWTClaimValidationFailed) {
    if (err.claim === "aud") return "aud is not this token endpoint's issuer";
    if (err.claim === "iss") return "iss is not this issuer";
    if (err.claim === "typ") return "typ must be JWT (a JWT-SVID)";
    return `claim ${err.claim} is invalid (${err.reason})`;
  }
  if (err instanceof joseErrors.JOSEAlgNotAllowed)
    return "alg is not allowed (only the issuer's asymmetric algorithms)";
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) return "signature does not verify";
  if (err instanceof joseErrors.JWSInvalid || err instanceof joseErrors.JWTInvalid)
    return "is not a well-formed signed JWT";
  if (err instanceof joseErrors.JOSENotSupported) return "uses an unsupported algorithm or header";
  return "does not verify";
}

// ---------------------------------------------------------------- decision

/** The task as the operator's cache shows it now. */
export interface TaskFacts {
  readonly uid: string;
  readonly spiffeId: string | undefined;
  readonly phase: string | undefined;
  readonly revoked: boolean;
  readonly deleting: boolean;
  readonly audiences: readonly string[];
  readonly scope: readonly string[];
  /** Serials of the certificates that may authenticate the task now (current and the one it replaced). */
  readonly liveSerials: readonly string[];
  readonly certificateNotAfter: number | undefined;
  /** The effective deadline (ms), if any. */
  readonly deadline: number | undefined;
  /**
   * Set when an agent above the task in its chain is gone, revoked, being
   * deleted or no longer Issued: its delegation no longer holds, even before
   * the cascade has reached this task.
   */
  readonly ancestorProblem?: string;
}

export interface VerifiedClient {
  readonly spiffeId: string;
  readonly serialHex: string;
}

export interface OboGrant {
  readonly audience: string;
  readonly scope: readonly string[];
  readonly expiresAt: number;
  readonly issuedAt: number;
  readonly subject: ChainHop;
  readonly actors: readonly string[];
}

/**
 * Decides an exchange after the subject token verified. The client
 * certificate must be the same agent's, the task must still be Issued, the
 * audience one it lists, the scope within its own.
 */
export function decideExchange(args: {
  subject: VerifiedSubject;
  client: VerifiedClient;
  task: TaskFacts | undefined;
  request: ExchangeRequest;
  now: number;
  maxTtlMs?: number;
}): OboGrant {
  const { subject, client, task, request, now } = args;
  if (client.spiffeId !== subject.sub) {
    refuse("invalid_client", "the client certificate's SPIFFE ID is not the subject token's sub");
  }
  if (!task || task.uid !== subject.custody.taskUid) {
    refuse("invalid_request", "subject_token: its task no longer exists");
  }
  const t = task!;
  if (t.revoked || t.phase === "Revoked") refuse("invalid_request", "subject_token: its task is revoked");
  if (t.deleting) refuse("invalid_request", "subject_token: its task is being deleted");
  if (t.phase !== "Issued")
    refuse("invalid_request", `subject_token: its task is ${t.phase ?? "not issued"}, not Issued`);
  if (t.spiffeId !== subject.sub) refuse("invalid_request", "subject_token: sub is not the task's SPIFFE ID");
  if (!t.liveSerials.includes(client.serialHex)) {
    refuse("invalid_client", "the client certificate is not a current certificate of the task");
  }
  if (t.ancestorProblem) refuse("invalid_request", `subject_token: ${t.ancestorProblem}`);
  if (!t.audiences.includes(request.audience)) {
    refuse(
      "invalid_target",
      `audience ${JSON.stringify(request.audience)} is not one of the task's spec.audiences`,
    );
  }
  const taskScope = validateScope(t.scope, "spec.scope");
  const scope = request.scope ?? taskScope;
  const subset = scopeIsSubset(scope, taskScope);
  if (!subset.ok) {
    refuse(
      "invalid_scope",
      `scope ${JSON.stringify(formatGrant(subset.grant))} is not within the task's scope`,
    );
  }
  const cap = Math.min(args.maxTtlMs ?? MAX_OBO_TTL_MS, MAX_OBO_TTL_MS);
  const expiresAt = tokenExpiry(now, cap, t.certificateNotAfter ?? now, t.deadline);
  if (expiresAt <= now)
    refuse("invalid_request", "subject_token: its task's credential has no lifetime left");
  const chain = subject.custody.chain;
  const agents = chain.filter((h) => h.kind === "agent").map((h) => h.spiffeId!);
  return {
    audience: request.audience,
    scope: scope.map(formatGrant),
    issuedAt: Math.floor(now / 1000) * 1000,
    expiresAt,
    subject: chain[0]!,
    // Current agent first, its parent next, the least recent last (RFC 8693 §4.1).
    actors: agents.reverse(),
  };
}

/**
 * The OBO token's `sub`: the root principal qualified by its kind
 * (`user:alice`, `workflow:nightly-triage`, `group:sre`,
 * `serviceaccount:system:serviceaccount:ns:sa`), so that a workflow or group
 * that happens to share a user's name can never be read as that user.
 */
export function subjectOf(root: ChainHop): string {
  return `${root.kind}:${root.name}`;
}

/** The RFC 8693 `act` claim: the current actor outermost, earlier actors nested deeper. */
export function actClaim(actors: readonly string[]): Record<string, unknown> | undefined {
  let act: Record<string, unknown> | undefined;
  for (let i = actors.length - 1; i >= 0; i--) act = act ? { sub: actors[i], act } : { sub: actors[i] };
  return act;
}

/** Signs the on-behalf-of access token (RFC 9068 header typ at+jwt). */
export function signOboToken(
  key: JwtKey,
  args: { issuer: string; grant: OboGrant; jti: string; custody: CustodyClaim },
): Promise<string> {
  const { grant } = args;
  return new SignJWT({
    scope: grant.scope.join(" "),
    client_id: grant.actors[0],
    act: actClaim(grant.actors),
    custody: { ...args.custody, delegator: { kind: grant.subject.kind, name: grant.subject.name } },
  })
    .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: "at+jwt" })
    .setIssuer(args.issuer)
    .setSubject(subjectOf(grant.subject))
    .setAudience(grant.audience)
    .setIssuedAt(Math.floor(grant.issuedAt / 1000))
    .setExpirationTime(Math.floor(grant.expiresAt / 1000))
    .setJti(args.jti)
    .sign(key.privateKey);
}
