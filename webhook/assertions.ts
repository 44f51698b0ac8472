/**
 * Verifies delegation assertions with jose: picks the issuer's keys (inline
 * JWK Set, remote JWK Set cached with a cooldown, or one PEM key), checks the
 * signature and algorithm, then hands the verified claims to the pure rules
 * in core/admission/assertion.ts. Returns what the signed requester record
 * keeps (issuer, subject, jti, digest) and never the token itself.
 *
 * Replay protection is not here: the caller claims the jti in the JtiStore
 * (webhook/jti-store.ts) after everything else about the request passed.
 */
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import {
  type CryptoKey,
  createLocalJWKSet,
  createRemoteJWKSet,
  customFetch,
  decodeJwt,
  decodeProtectedHeader,
  errors,
  type FetchImplementation,
  importSPKI,
  type JWSHeaderParameters,
  type JWTPayload,
  type JWTVerifyGetKey,
  jwtVerify,
} from "jose";
import {
  ASSERTION_FIELD,
  type AssertionIssuer,
  type CheckedAssertion,
  CLOCK_SKEW_SECONDS,
  checkAssertionClaims,
  MAX_ASSERTION_LENGTH,
  parseAssertionIssuersJson,
} from "../core/admission/assertion.ts";
import type { AgentTaskSpec } from "../core/api/v1alpha1.ts";
import { ValidationError } from "../core/errors.ts";

/** The rule of a refusal caused by the issuer's key endpoint, not by the assertion: worth a retry. */
export const JWKS_UNAVAILABLE_RULE = "jwks-unavailable";

export interface VerifiedAssertion extends CheckedAssertion {
  /** Hex SHA-256 of the token's bytes: what the signed record keeps instead of the token. */
  digest: string;
}

export interface AssertionRequestContext {
  /** AdmissionReview request.userInfo.username. */
  requester: string;
  namespace: string;
  name: string;
  /** The task's spec as admission sees it (after API server defaults). */
  spec: AgentTaskSpec | Record<string, unknown>;
  /** Milliseconds since the epoch; defaults to the clock. */
  now?: number;
}

export interface AssertionVerifier {
  /** The configured issuers' `iss` values. */
  readonly issuers: readonly string[];
  /** Throws ValidationError(field, rule); `rule === JWKS_UNAVAILABLE_RULE` is transient. */
  verify(token: unknown, ctx: AssertionRequestContext): Promise<VerifiedAssertion>;
}

export interface AssertionVerifierOptions {
  /** fetch for jwksUri (tests pass one that trusts their CA; in production NODE_EXTRA_CA_CERTS does). */
  fetch?: FetchImplementation;
  /** Abort a JWK Set fetch after this long: admission has a short timeout of its own. */
  jwksTimeoutMs?: number;
  /** After a fetch, an unknown kid triggers another only after this long (bounds fetches a caller can cause). */
  jwksCooldownMs?: number;
  /** Refetch keys this old even when every kid matches (picks up removed keys). */
  jwksCacheMaxAgeMs?: number;
}

type KeyResolver = JWTVerifyGetKey<CryptoKey>;

/** Marks a failure of the issuer's key endpoint inside jose's key resolution. */
class JwksUnavailable extends Error {}

export function createAssertionVerifier(
  issuers: readonly AssertionIssuer[],
  options: AssertionVerifierOptions = {},
): AssertionVerifier {
  const byIssuer = new Map<string, { cfg: AssertionIssuer; keys: KeyResolver }>();
  for (const cfg of issuers) byIssuer.set(cfg.issuer, { cfg, keys: keyResolver(cfg, options) });

  return {
    issuers: issuers.map((i) => i.issuer),
    async verify(token, ctx) {
      if (typeof token !== "string" || token.length === 0)
        fail(ASSERTION_FIELD, "present", "is missing or empty");
      if (token.length > MAX_ASSERTION_LENGTH)
        fail(ASSERTION_FIELD, "max-length", `is longer than ${MAX_ASSERTION_LENGTH} characters`);

      // `iss` is read unverified only to pick which keys to verify with; the
      // claims are trusted only after the signature verified with those keys.
      let unverified: JWTPayload;
      let header: JWSHeaderParameters;
      try {
        if (token.split(".").length !== 3) throw new Error("not three parts");
        unverified = decodeJwt(token);
        header = decodeProtectedHeader(token) as JWSHeaderParameters;
      } catch {
        return fail(
          ASSERTION_FIELD,
          "malformed",
          "is not a compact JWT (base64url header.payload.signature)",
        );
      }
      const entry = typeof unverified.iss === "string" ? byIssuer.get(unverified.iss) : undefined;
      if (!entry) {
        const known = [...byIssuer.keys()].map((i) => JSON.stringify(i)).join(", ") || "none";
        return fail(
          `${ASSERTION_FIELD}.iss`,
          "issuer",
          `names issuer ${bounded(unverified.iss)}, which is not configured (configured: ${known})`,
        );
      }
      const { cfg, keys } = entry;
      const now = ctx.now ?? Date.now();
      const checkContext = {
        issuer: cfg,
        requester: ctx.requester,
        namespace: ctx.namespace,
        name: ctx.name,
        spec: ctx.spec,
        now,
      };

      let payload: JWTPayload;
      let protectedHeader: JWSHeaderParameters;
      try {
        ({ payload, protectedHeader } = await jwtVerify(token, keys, {
          algorithms: [...cfg.algorithms],
          clockTolerance: CLOCK_SKEW_SECONDS,
          currentDate: new Date(now),
        }));
      } catch (err) {
        // jose checks exp and nbf after the signature verified; the core
        // rules decide and word the refusal from that (verified) payload.
        if (err instanceof errors.JWTExpired || err instanceof errors.JWTClaimValidationFailed) {
          checkAssertionClaims(err.payload, { ...checkContext, header });
          return fail(`${ASSERTION_FIELD}.${err.claim}`, "claims", `is refused: ${err.message}`);
        }
        return refuse(err, cfg, header);
      }
      const checked = checkAssertionClaims(payload, { ...checkContext, header: protectedHeader });
      return { ...checked, digest: createHash("sha256").update(token, "utf8").digest("hex") };
    },
  };
}

function keyResolver(cfg: AssertionIssuer, options: AssertionVerifierOptions): KeyResolver {
  if (cfg.jwks) {
    const local = createLocalJWKSet(cfg.jwks as Parameters<typeof createLocalJWKSet>[0]);
    return (header, token) => local(header, token);
  }
  if (cfg.jwksUri) {
    const remote = createRemoteJWKSet(new URL(cfg.jwksUri), {
      timeoutDuration: options.jwksTimeoutMs ?? 3_000,
      cooldownDuration: options.jwksCooldownMs ?? 30_000,
      cacheMaxAge: options.jwksCacheMaxAgeMs ?? 600_000,
      ...(options.fetch ? { [customFetch]: options.fetch } : {}),
    });
    return async (header, token) => {
      try {
        return await remote(header, token);
      } catch (err) {
        // A key that is not there is the assertion's problem; a fetch that
        // failed is the endpoint's, and the requester may simply retry.
        if (err instanceof errors.JWKSNoMatchingKey || err instanceof errors.JWKSMultipleMatchingKeys)
          throw err;
        throw new JwksUnavailable(describeFetchError(err));
      }
    };
  }
  // One PEM key: import it once per algorithm (jose binds a key to its alg).
  const pem = cfg.publicKeyPem!;
  const imported = new Map<string, Promise<CryptoKey>>();
  return (header) => {
    const alg = String(header.alg);
    let key = imported.get(alg);
    if (!key) {
      key = importSPKI(pem, alg);
      imported.set(alg, key);
      // A failed import (alg that does not fit the key) is not cached.
      key.catch(() => imported.delete(alg));
    }
    return key;
  };
}

/** Turns a jose failure into a refusal naming the rule; never quotes the token. */
function refuse(err: unknown, cfg: AssertionIssuer, header: JWSHeaderParameters): never {
  const iss = JSON.stringify(cfg.issuer);
  if (err instanceof JwksUnavailable)
    fail(
      ASSERTION_FIELD,
      JWKS_UNAVAILABLE_RULE,
      `cannot be checked now: the keys of issuer ${iss} could not be fetched (${err.message}); try again`,
    );
  if (err instanceof errors.JOSEAlgNotAllowed)
    fail(
      `${ASSERTION_FIELD}.header.alg`,
      "alg",
      `is ${bounded(header.alg)}; issuer ${iss} is accepted only with ${cfg.algorithms.join(", ")}`,
    );
  if (err instanceof errors.JWKSNoMatchingKey)
    fail(
      `${ASSERTION_FIELD}.header.kid`,
      "kid",
      `names key ${bounded(header.kid)} for ${bounded(header.alg)}, which issuer ${iss} does not publish`,
    );
  if (err instanceof errors.JWKSMultipleMatchingKeys)
    fail(
      `${ASSERTION_FIELD}.header.kid`,
      "kid",
      `matches more than one key of issuer ${iss}: sign with a kid`,
    );
  if (err instanceof errors.JWSSignatureVerificationFailed)
    fail(ASSERTION_FIELD, "signature", `has a signature that does not verify with issuer ${iss}'s keys`);
  if (
    err instanceof errors.JOSENotSupported ||
    err instanceof errors.JWSInvalid ||
    err instanceof errors.JWTInvalid
  )
    fail(ASSERTION_FIELD, "malformed", `is not a JWT Custody can verify: ${err.message}`);
  if (err instanceof errors.JOSEError || err instanceof TypeError)
    // e.g. the token's alg does not fit the configured PEM key, an RSA key under 2048 bits.
    fail(ASSERTION_FIELD, "key", `does not verify with issuer ${iss}'s key (alg ${bounded(header.alg)})`);
  throw err;
}

function describeFetchError(err: unknown): string {
  if (err instanceof errors.JWKSTimeout) return "timed out";
  if (err instanceof errors.JWKSInvalid) return "the response is not a JWK Set";
  const message = err instanceof Error ? err.message : String(err);
  const cause = err instanceof Error && err.cause instanceof Error ? `: ${err.cause.message}` : "";
  return `${message}${cause}`.slice(0, 200);
}

/** A value from the unverified token, quoted and bounded for a message. */
function bounded(v: unknown): string {
  const s = JSON.stringify(v) ?? "absent";
  return s.length > 130 ? `${s.slice(0, 127)}...` : s;
}

function fail(field: string, rule: string, message: string): never {
  throw new ValidationError(field, rule, `${field}: ${message} (rule ${rule})`);
}

/**
 * The issuers configuration from the environment: CUSTODY_ASSERTION_ISSUERS
 * (JSON) or CUSTODY_ASSERTION_ISSUERS_FILE (a path to the same JSON, e.g. a
 * mounted ConfigMap), not both. Neither set: no issuer, so no assertion is
 * ever accepted.
 */
export function loadAssertionIssuers(env: NodeJS.ProcessEnv = process.env): AssertionIssuer[] {
  const inline = env.CUSTODY_ASSERTION_ISSUERS;
  const file = env.CUSTODY_ASSERTION_ISSUERS_FILE;
  if (inline && file)
    fail(
      "CUSTODY_ASSERTION_ISSUERS_FILE",
      "exclusive",
      "is set together with CUSTODY_ASSERTION_ISSUERS: set only one of them",
    );
  if (inline) return parseAssertionIssuersJson(inline, "CUSTODY_ASSERTION_ISSUERS");
  if (file) {
    if (!existsSync(file))
      fail("CUSTODY_ASSERTION_ISSUERS_FILE", "exists", `names ${file}, which does not exist`);
    return parseAssertionIssuersJson(readFileSync(file, "utf8"), file);
  }
  return [];
}
