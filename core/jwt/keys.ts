/**
 * The JWT signing key ring: which key signs now, which are published, when
 * the next one is made and when a retired one may go. Pure: the clock and
 * key generation are passed in.
 *
 * Every date is in the ring itself, so every replica that reads the same ring
 * agrees on the signing key without being told (up to clock skew): a key
 * signs from its `activateAt` until the next key's `activateAt`.
 *
 *   created (published) ──publishAhead──▶ activateAt (signs) ──▶ successor
 *   activates (retired, still published) ──retention──▶ removed
 *
 * - A new key is published `publishAhead` before it signs, so relying parties
 *   that refresh their JWKS (Cache-Control max-age) see it in time.
 * - A retired key stays published for `retention` after it last signed: the
 *   longest token lifetime plus clock skew, so every token it signed expires
 *   while its key is still published.
 */
import { createPrivateKey, createPublicKey, type KeyObject } from "node:crypto";
import { z } from "zod";
import { ValidationError } from "../errors.ts";
import { thumbprintOf } from "../provenance/sign.ts";

export const JWT_ALGORITHMS = ["ES256", "ES384", "RS256", "PS256"] as const;
export type JwtAlgorithm = (typeof JWT_ALGORITHMS)[number];

export interface JwtKey {
  /** RFC 7638 thumbprint of the public key. */
  readonly kid: string;
  readonly alg: JwtAlgorithm;
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
  /** Milliseconds since the epoch: published from here on. */
  readonly createdAt: number;
  /** Signs from here until the next key's activateAt. */
  readonly activateAt: number;
}

export interface KeySchedule {
  /** How long a key signs before its successor takes over. */
  readonly rotationPeriodMs: number;
  /** How long a new key is published before it signs. */
  readonly publishAheadMs: number;
  /** How long a retired key stays published after it last signed (longest token lifetime + skew). */
  readonly retentionMs: number;
}

/** Keys in order of activateAt (oldest first). */
export type KeyRingState = readonly JwtKey[];

const byActivation = (a: JwtKey, b: JwtKey) => a.activateAt - b.activateAt || a.createdAt - b.createdAt;

/** The key that signs at `now`: the latest activated one. */
export function signingKey(ring: KeyRingState, now: number): JwtKey | undefined {
  let current: JwtKey | undefined;
  for (const k of ring) if (k.activateAt <= now && (!current || byActivation(current, k) < 0)) current = k;
  return current;
}

/** Keys a verifier must know at `now`: the signing one, the next ones and the retired ones still in retention. */
export function publishedKeys(ring: KeyRingState, now: number, schedule: KeySchedule): JwtKey[] {
  const sorted = [...ring].sort(byActivation);
  return sorted.filter((k, i) => {
    if (k.createdAt > now) return false;
    const successor = sorted[i + 1];
    // Retired when the successor activated; gone `retention` later.
    return !successor || successor.activateAt > now || successor.activateAt + schedule.retentionMs > now;
  });
}

/**
 * When the published set last changed at `now` (a key published, or a
 * retired one dropped): a deterministic, increasing sequence number for the
 * SPIFFE bundle, the same on every replica.
 */
export function publishedSince(ring: KeyRingState, now: number, schedule: KeySchedule): number {
  const sorted = [...ring].sort(byActivation);
  let last = 0;
  sorted.forEach((k, i) => {
    if (k.createdAt <= now) last = Math.max(last, k.createdAt);
    // k's predecessor left the published set `retention` after k activated,
    // whether or not it is still in the ring: only a first key (created
    // signing, createdAt = activateAt) has none.
    const hadPredecessor = i > 0 || k.activateAt > k.createdAt;
    const dropAt = k.activateAt + schedule.retentionMs;
    if (hadPredecessor && dropAt <= now) last = Math.max(last, dropAt);
  });
  return last;
}

export interface RotationPlan {
  readonly ring: KeyRingState;
  /** What changed, for the log (never key material). */
  readonly changes: string[];
}

/**
 * The next state of the ring at `now`: adds the first key, adds the next key
 * `publishAhead` before the current one's period ends, drops keys whose
 * retention has passed. Returns the same array when nothing changes.
 */
export function planRotation(
  ring: KeyRingState,
  now: number,
  schedule: KeySchedule,
  generate: (createdAt: number, activateAt: number) => JwtKey,
): RotationPlan {
  const changes: string[] = [];
  let next = [...ring].sort(byActivation);
  const current = signingKey(next, now);
  if (!current) {
    // Nothing has ever been signed (or every key was lost): no relying party
    // can hold a token, so the first key signs at once.
    const k = generate(now, now);
    next.push(k);
    changes.push(`created key ${k.kid} (first key, signs now)`);
  } else {
    const pending = next.some((k) => k.activateAt > now);
    const due = current.activateAt + schedule.rotationPeriodMs;
    if (!pending && now >= due - schedule.publishAheadMs) {
      const k = generate(now, Math.max(now + schedule.publishAheadMs, due));
      next.push(k);
      changes.push(`created key ${k.kid}, published now, signs from ${new Date(k.activateAt).toISOString()}`);
    }
  }
  next.sort(byActivation);
  const kept = publishedKeys(next, now, schedule);
  const keptIds = new Set(kept.map((k) => k.kid));
  const dropped = next.filter((k) => !keptIds.has(k.kid) && k.createdAt <= now);
  for (const k of dropped) changes.push(`removed key ${k.kid} (retired, every token it signed has expired)`);
  if (dropped.length > 0) next = next.filter((k) => !dropped.includes(k));
  return { ring: changes.length === 0 ? ring : next, changes };
}

/** Validates a schedule: a key must be published before it signs and outlive its tokens. */
export function checkSchedule(s: KeySchedule): KeySchedule {
  const fail = (field: string, rule: string, message: string): never => {
    throw new ValidationError(field, rule, `${field}: ${message} (rule ${rule})`);
  };
  if (!(s.publishAheadMs > 0)) fail("publishAhead", "positive", "must be greater than 0");
  if (!(s.rotationPeriodMs > s.publishAheadMs)) {
    fail("rotationPeriod", "longer-than-publish-ahead", "must be longer than the publish-ahead time");
  }
  if (!(s.retentionMs > 0)) fail("retention", "positive", "must be greater than 0");
  // Retired keys are kept for `retention`: a period much shorter than that
  // would grow the ring past what is stored.
  const most = Math.ceil(s.retentionMs / s.rotationPeriodMs) + 2;
  if (most > MAX_STORED_KEYS - 8) {
    fail(
      "rotationPeriod",
      "ring-size",
      `must be at least ${Math.ceil(s.retentionMs / (MAX_STORED_KEYS - 10) / 1000)} s: with a retention of ` +
        `${Math.round(s.retentionMs / 1000)} s the ring would hold up to ${most} keys (at most ${MAX_STORED_KEYS - 8})`,
    );
  }
  return s;
}

// ---------------------------------------------------------------- storage

/** The ring as stored (in a Secret only the operator may read): private keys as PKCS#8 PEM. */
const storedKey = z.strictObject({
  kid: z.string().regex(/^[A-Za-z0-9_-]{43}$/),
  alg: z.enum(JWT_ALGORITHMS),
  privateKeyPem: z.string().startsWith("-----BEGIN PRIVATE KEY-----"),
  createdAt: z.iso.datetime(),
  activateAt: z.iso.datetime(),
});
const MAX_STORED_KEYS = 64;
const storedRing = z.strictObject({ version: z.literal(1), keys: z.array(storedKey).max(MAX_STORED_KEYS) });

export function serializeRing(ring: KeyRingState): string {
  return JSON.stringify({
    version: 1,
    keys: ring.map((k) => ({
      kid: k.kid,
      alg: k.alg,
      privateKeyPem: k.privateKey.export({ format: "pem", type: "pkcs8" }).toString(),
      createdAt: new Date(k.createdAt).toISOString(),
      activateAt: new Date(k.activateAt).toISOString(),
    })),
  });
}

/** Parses a stored ring; throws ValidationError naming the field (never echoing key material). */
export function parseRing(text: string, field = "keys.json"): JwtKey[] {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new ValidationError(field, "json", `${field}: is not JSON (rule json)`);
  }
  const parsed = storedRing.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const at = [field, ...issue.path.map(String)].join(".");
    throw new ValidationError(
      at,
      issue.code,
      `${at}: ${issue.code === "invalid_format" ? "malformed" : issue.message} (rule ${issue.code})`,
    );
  }
  return parsed.data.keys.map((s, i) => {
    const privateKey = loadPrivateKey(s.privateKeyPem, `${field}.keys[${i}].privateKeyPem`);
    const publicKey = createPublicKey(privateKey);
    checkKeyFitsAlg(publicKey, s.alg, `${field}.keys[${i}].alg`);
    const kid = jwtKeyId(publicKey);
    if (kid !== s.kid) {
      throw new ValidationError(
        `${field}.keys[${i}].kid`,
        "thumbprint",
        `${field}.keys[${i}].kid: is not the key's thumbprint (rule thumbprint)`,
      );
    }
    return {
      kid,
      alg: s.alg,
      privateKey,
      publicKey,
      createdAt: Date.parse(s.createdAt),
      activateAt: Date.parse(s.activateAt),
    };
  });
}

function loadPrivateKey(pem: string, field: string): KeyObject {
  try {
    return createPrivateKey(pem);
  } catch {
    throw new ValidationError(field, "pkcs8", `${field}: is not a PKCS#8 private key (rule pkcs8)`);
  }
}

/** Refuses a key whose type does not match the algorithm it is stored for. */
export function checkKeyFitsAlg(publicKey: KeyObject, alg: JwtAlgorithm, field: string): void {
  const type = publicKey.asymmetricKeyType;
  const curve = publicKey.asymmetricKeyDetails?.namedCurve;
  const ok =
    alg === "ES256"
      ? type === "ec" && curve === "prime256v1"
      : alg === "ES384"
        ? type === "ec" && curve === "secp384r1"
        : type === "rsa" && (publicKey.asymmetricKeyDetails?.modulusLength ?? 0) >= 2048;
  if (!ok) throw new ValidationError(field, "key-type", `${field}: key does not fit ${alg} (rule key-type)`);
}

/** RFC 7638 SHA-256 thumbprint (base64url) of an EC or RSA public key: the JWT key id. */
export function jwtKeyId(publicKey: KeyObject): string {
  return thumbprintOf(publicKey);
}

/** The public JWK of a key as a JWKS publishes it (`use: sig`). */
export function publicJwk(k: JwtKey, use: "sig" | "jwt-svid" = "sig"): Record<string, string> {
  const jwk = k.publicKey.export({ format: "jwk" }) as Record<string, string>;
  const fields: Record<string, string> =
    jwk.kty === "EC"
      ? { kty: jwk.kty, crv: jwk.crv!, x: jwk.x!, y: jwk.y! }
      : { kty: jwk.kty!, n: jwk.n!, e: jwk.e! };
  return use === "sig" ? { ...fields, use, alg: k.alg, kid: k.kid } : { ...fields, use, kid: k.kid };
}
