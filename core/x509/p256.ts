import type { KeyObject } from "node:crypto";

/**
 * Fixed-layout P-256 key encodings. node:crypto's DER exporters and its
 * KeyObject constructors cost more than an ECDSA signature (measured in
 * bench/mint.ts), so the hot path builds these byte-for-byte identical
 * encodings from templates and checks points with BigInt arithmetic.
 */

const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s, "hex"));

/** SubjectPublicKeyInfo { id-ecPublicKey, prime256v1 } BIT STRING header; 0x04 || X || Y follows. */
export const SPKI_PREFIX = hex("3059301306072a8648ce3d020106082a8648ce3d030107034200");
export const SPKI_LENGTH = SPKI_PREFIX.length + 65;

/** PKCS#8 PrivateKeyInfo around ECPrivateKey v1 (as OpenSSL writes it): d, then [1] public key. */
const PKCS8_HEAD = hex("308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b0201010420");
const PKCS8_MIDDLE = hex("a144034200");

const P = 0xffffffff00000001000000000000000000000000ffffffffffffffffffffffffn;
const B = 0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604bn;

const toBigInt = (b: Uint8Array): bigint =>
  BigInt(`0x${Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex")}`);

/** Whether `point` (0x04 || X || Y) is a point of P-256 (cofactor 1, so on-curve means valid). */
export function isOnCurve(point: Uint8Array): boolean {
  if (point.length !== 65 || point[0] !== 0x04) return false;
  const x = toBigInt(point.subarray(1, 33));
  const y = toBigInt(point.subarray(33, 65));
  if (x >= P || y >= P) return false;
  return (((y * y - (x * x * x - 3n * x + B)) % P) + P) % P === 0n;
}

interface P256Jwk {
  readonly x: string;
  readonly y: string;
  readonly d?: string;
}

function jwkOf(key: KeyObject): P256Jwk {
  return key.export({ format: "jwk" }) as P256Jwk;
}

function point(jwk: P256Jwk): Uint8Array {
  const out = new Uint8Array(65);
  out[0] = 0x04;
  out.set(Buffer.from(jwk.x, "base64url"), 1);
  out.set(Buffer.from(jwk.y, "base64url"), 33);
  return out;
}

/** SPKI DER of a P-256 KeyObject (public or private). */
export function spkiOfP256(key: KeyObject): Uint8Array {
  const out = new Uint8Array(SPKI_LENGTH);
  out.set(SPKI_PREFIX);
  out.set(point(jwkOf(key)), SPKI_PREFIX.length);
  return out;
}

/** PKCS#8 DER and SPKI DER of a P-256 private KeyObject, from one JWK export. */
export function encodeP256PrivateKey(privateKey: KeyObject): { pkcs8: Uint8Array; spki: Uint8Array } {
  const jwk = jwkOf(privateKey);
  if (!jwk.d) throw new TypeError("encodeP256PrivateKey: not a private key");
  const pub = point(jwk);
  const pkcs8 = new Uint8Array(PKCS8_HEAD.length + 32 + PKCS8_MIDDLE.length + 65);
  pkcs8.set(PKCS8_HEAD);
  pkcs8.set(Buffer.from(jwk.d, "base64url"), PKCS8_HEAD.length);
  pkcs8.set(PKCS8_MIDDLE, PKCS8_HEAD.length + 32);
  pkcs8.set(pub, PKCS8_HEAD.length + 32 + PKCS8_MIDDLE.length);
  const spki = new Uint8Array(SPKI_LENGTH);
  spki.set(SPKI_PREFIX);
  spki.set(pub, SPKI_PREFIX.length);
  return { pkcs8, spki };
}
