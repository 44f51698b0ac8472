/**
 * ES256 signing and verification over node:crypto KeyObjects, byte-compatible
 * with JOSE (RFC 7518 §3.4): ECDSA P-256 with SHA-256, signature as the
 * 64-byte IEEE P1363 concatenation r||s, written base64url. Key ids are RFC
 * 7638 JWK SHA-256 thumbprints of the public key, so a verifier can check
 * that a published key really is the one a kid names.
 *
 * ECDSA nonces come from node:crypto (random), so two signatures over the same
 * bytes differ; that is why records are signed once and re-sent as bytes.
 *
 * Speed: node:crypto's sign/verify run 2-3x slower when given an options
 * object (`{ key, dsaEncoding }`) than when given the KeyObject itself (Node
 * 24, measured), so the key is passed bare and DER <-> P1363 is converted here.
 */
import { createHash, createPublicKey, type JsonWebKey, type KeyObject, sign, verify } from "node:crypto";
import { ValidationError } from "../errors.ts";
import { canonicalize } from "./canonical-json.ts";

export const ES256_SIGNATURE_BYTES = 64;

export interface Signer {
  /** RFC 7638 thumbprint of the public key that verifies this signer's signatures. */
  readonly kid: string;
  /** Signs the bytes; returns the 64-byte IEEE P1363 ES256 signature. */
  sign(bytes: Uint8Array): Uint8Array;
}

/** Verification keys by kid (as {@link createKeyRing} builds them). */
export type KeyRing = ReadonlyMap<string, KeyObject>;

/** A signer over an EC P-256 private key. */
export function createEs256Signer(privateKey: KeyObject): Signer {
  if (privateKey.type !== "private") throw keyError("privateKey", "must be a private key");
  requireP256(privateKey, "privateKey");
  const kid = jwkThumbprint(createPublicKey(privateKey));
  return {
    kid,
    sign: (bytes) => derToP1363(sign("sha256", bytes, privateKey)),
  };
}

/** Verifies an ES256 (P1363) signature; never throws on a bad signature. */
export function verifyEs256(publicKey: KeyObject, bytes: Uint8Array, signature: Uint8Array): boolean {
  if (signature.byteLength !== ES256_SIGNATURE_BYTES) return false;
  return verify("sha256", bytes, publicKey, p1363ToDer(signature));
}

const COORDINATE = ES256_SIGNATURE_BYTES / 2;

/** DER ECDSA-Sig-Value (SEQUENCE { r INTEGER, s INTEGER }) to r||s, each left-padded to 32 bytes. */
export function derToP1363(der: Uint8Array): Uint8Array {
  // P-256 signatures are at most 72 bytes, so every DER length here is one byte.
  const fail = (): never => {
    throw new Error("ES256 signer returned a malformed DER signature");
  };
  if (der[0] !== 0x30 || der[1] !== der.length - 2) fail();
  const out = new Uint8Array(ES256_SIGNATURE_BYTES);
  let at = 2;
  for (let half = 0; half < 2; half++) {
    if (der[at] !== 0x02) fail();
    const length = der[at + 1]!;
    let start = at + 2;
    const end = start + length;
    if (length === 0 || end > der.length) fail();
    while (start < end - 1 && der[start] === 0) start++;
    if (end - start > COORDINATE) fail();
    out.set(der.subarray(start, end), (half + 1) * COORDINATE - (end - start));
    at = end;
  }
  if (at !== der.length) fail();
  return out;
}

/** r||s to DER ECDSA-Sig-Value: minimal positive INTEGERs. */
export function p1363ToDer(signature: Uint8Array): Uint8Array {
  const integer = (bytes: Uint8Array): number[] => {
    let start = 0;
    while (start < bytes.length - 1 && bytes[start] === 0) start++;
    const body = [...bytes.subarray(start)];
    return body[0]! & 0x80 ? [0x02, body.length + 1, 0, ...body] : [0x02, body.length, ...body];
  };
  const r = integer(signature.subarray(0, COORDINATE));
  const s = integer(signature.subarray(COORDINATE));
  return new Uint8Array([0x30, r.length + s.length, ...r, ...s]);
}

/** RFC 7638 SHA-256 thumbprint (base64url) of an EC P-256 public key. */
export function jwkThumbprint(key: KeyObject | JsonWebKey): string {
  return thumbprintOf(toPublicKey(key, "key"));
}

/** RFC 7638 SHA-256 thumbprint (base64url) of any EC or RSA public key. */
export function thumbprintOf(publicKey: KeyObject): string {
  const jwk = publicKey.export({ format: "jwk" });
  // The required members, no whitespace, sorted: exactly their JCS form.
  const members =
    jwk.kty === "EC"
      ? { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y }
      : { e: jwk.e, kty: jwk.kty, n: jwk.n };
  return createHash("sha256").update(canonicalize(members), "utf8").digest("base64url");
}

/**
 * Builds a key ring from public keys (KeyObjects or JWKs), keyed by their
 * thumbprints. Given a map, checks each kid against its key's thumbprint,
 * so a mislabelled key cannot vouch for another kid.
 */
export function createKeyRing(
  keys: Iterable<KeyObject | JsonWebKey> | ReadonlyMap<string, KeyObject | JsonWebKey>,
): KeyRing {
  const ring = new Map<string, KeyObject>();
  if (keys instanceof Map) {
    for (const [kid, key] of keys as ReadonlyMap<string, KeyObject | JsonWebKey>) {
      const publicKey = toPublicKey(key, `keys[${kid}]`);
      const thumbprint = jwkThumbprint(publicKey);
      if (thumbprint !== kid) {
        throw new ValidationError(
          `keys[${kid}]`,
          "kid-thumbprint",
          `keys[${kid}]: kid must be the RFC 7638 thumbprint of its key (${thumbprint}) (rule kid-thumbprint)`,
        );
      }
      ring.set(kid, publicKey);
    }
    return ring;
  }
  let i = 0;
  for (const key of keys as Iterable<KeyObject | JsonWebKey>) {
    const publicKey = toPublicKey(key, `keys[${i++}]`);
    ring.set(jwkThumbprint(publicKey), publicKey);
  }
  return ring;
}

/** The public half of a KeyObject or JWK, required to be EC P-256. */
export function toPublicKey(key: KeyObject | JsonWebKey, field: string): KeyObject {
  let publicKey: KeyObject;
  if (isKeyObject(key)) {
    publicKey = key.type === "public" ? key : key.type === "private" ? createPublicKey(key) : badKey(field);
  } else {
    // Only the public members: a JWK carrying `d` must not turn into a private key here.
    const { kty, crv, x, y } = key;
    try {
      publicKey = createPublicKey({ key: { kty, crv, x, y } as JsonWebKey, format: "jwk" });
    } catch {
      throw keyError(field, "must be an EC P-256 public JWK (kty EC, crv P-256, x, y)");
    }
  }
  requireP256(publicKey, field);
  return publicKey;
}

/** base64url without padding; refuses any string that is not the exact encoding of its bytes. */
export function decodeBase64url(s: string): Uint8Array | null {
  if (!/^[A-Za-z0-9_-]*$/.test(s)) return null;
  const bytes = Buffer.from(s, "base64url");
  // Trailing bits of the last character are not part of the bytes: a changed
  // padding bit would otherwise decode to the same signature.
  if (bytes.toString("base64url") !== s) return null;
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export function encodeBase64url(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64url");
}

function isKeyObject(key: KeyObject | JsonWebKey): key is KeyObject {
  return typeof (key as KeyObject).export === "function" && typeof (key as KeyObject).type === "string";
}

function requireP256(key: KeyObject, field: string): void {
  if (key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== "prime256v1") {
    throw keyError(field, "must be an EC P-256 key (ES256)");
  }
}

function badKey(field: string): never {
  throw keyError(field, "must be an asymmetric key");
}

function keyError(field: string, message: string): ValidationError {
  return new ValidationError(field, "es256-key", `${field}: ${message} (rule es256-key)`);
}
