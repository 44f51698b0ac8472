import { createHash, createPublicKey, type KeyObject, sign } from "node:crypto";
import { bitString, DerReader, owned, sequence, TAG, tlv } from "./der.ts";
import { X509Error } from "./errors.ts";
import { OID } from "./oids.ts";

/** How a CA key signs: the hash, the AlgorithmIdentifier to write, and node:crypto options. */
export interface Signer {
  readonly key: KeyObject;
  readonly hash: "sha256" | "sha384";
  /** AlgorithmIdentifier TLV (used in both TBSCertificate.signature and Certificate.signatureAlgorithm). */
  readonly algorithmIdentifier: Uint8Array;
}

const NULL = new Uint8Array([TAG.NULL, 0]);

/**
 * Picks the signature algorithm for a CA private key. P-256 is the default;
 * P-384 and RSA >= 2048 are accepted for user-supplied CAs.
 */
export function signerFor(key: KeyObject, field: string): Signer {
  const type = key.asymmetricKeyType;
  const details = key.asymmetricKeyDetails ?? {};
  if (type === "ec") {
    if (details.namedCurve === "prime256v1") {
      return { key, hash: "sha256", algorithmIdentifier: sequence(OID.ecdsaWithSha256) };
    }
    if (details.namedCurve === "secp384r1") {
      return { key, hash: "sha384", algorithmIdentifier: sequence(OID.ecdsaWithSha384) };
    }
    throw new X509Error(field, `EC curve ${details.namedCurve} is not supported (use P-256 or P-384)`);
  }
  if (type === "rsa") {
    if ((details.modulusLength ?? 0) < 2048) {
      throw new X509Error(field, `RSA key of ${details.modulusLength} bits is too small (minimum 2048)`);
    }
    return {
      key,
      hash: "sha256",
      algorithmIdentifier: sequence(OID.sha256WithRsa, NULL),
    };
  }
  throw new X509Error(field, `key type ${type} is not supported (use EC P-256, P-384 or RSA)`);
}

/** Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }. */
export function signCertificate(signer: Signer, tbs: Uint8Array): Uint8Array {
  // The bare KeyObject (not an options object) is node's fast path: the options
  // form costs about half the throughput. ECDSA output is DER by default.
  const signature = sign(signer.hash, tbs, signer.key);
  return owned(sequence(tbs, signer.algorithmIdentifier, bitString(signature)));
}

/** The subjectPublicKey BIT STRING's key bytes (without the unused-bits octet). */
export function subjectPublicKeyBits(spki: Uint8Array, field: string): Uint8Array {
  const top = new DerReader(spki, field);
  const r = top.enter(TAG.SEQUENCE, "");
  top.finish();
  r.expect(TAG.SEQUENCE, "algorithm");
  const bits = r.expect(TAG.BIT_STRING, "subjectPublicKey").content;
  r.finish();
  if (bits[0] !== 0) throw new X509Error(`${field}.subjectPublicKey`, "must have 0 unused bits");
  return bits.subarray(1);
}

/** RFC 5280 §4.2.1.2 method (1): SHA-1 of the subjectPublicKey bits. */
export function keyIdentifier(publicKeyBits: Uint8Array): Uint8Array {
  return new Uint8Array(createHash("sha1").update(publicKeyBits).digest());
}

export function spkiOf(key: KeyObject): Uint8Array {
  const pub = key.type === "private" ? createPublicKey(key) : key;
  return new Uint8Array(pub.export({ type: "spki", format: "der" }));
}

/** Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }. */
export function extension(oidTlv: Uint8Array, critical: boolean, value: Uint8Array): Uint8Array {
  return critical
    ? sequence(oidTlv, new Uint8Array([TAG.BOOLEAN, 1, 0xff]), tlv(TAG.OCTET_STRING, value))
    : sequence(oidTlv, tlv(TAG.OCTET_STRING, value));
}
