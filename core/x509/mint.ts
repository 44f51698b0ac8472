import { createHash, generateKeyPairSync, KeyObject } from "node:crypto";
import type { CertificateAuthority } from "./ca.ts";
import { type DelegationInfo, encodeDelegationExtension } from "./delegation-extension.ts";
import { bytesEqual, concat, contextExplicit, integer, sequence, TAG, time, tlv } from "./der.ts";
import { X509Error } from "./errors.ts";
import { OID } from "./oids.ts";
import { encodeP256PrivateKey, isOnCurve, SPKI_LENGTH, SPKI_PREFIX, spkiOfP256 } from "./p256.ts";
import { toPem } from "./pem.ts";
import { encodeSerial } from "./serial.ts";
import { extension, keyIdentifier, signCertificate } from "./signing.ts";
import { parseSpiffeId } from "./spiffe-id.ts";

/**
 * X.509-SVID minting (SPIFFE X509-SVID spec §4–5, RFC 5280). The
 * TBSCertificate is assembled from fragments that are constant (module level)
 * or constant per CA (CertificateAuthority), so a mint costs one DER
 * concatenation, two hashes and one signature.
 *
 * Leaf profile:
 *   version v3; serial from the caller; ecdsa-with-SHA256 (P-256 CA);
 *   subject O=Custody (non-empty, so the SAN need not be critical);
 *   extensions in this order:
 *     basicConstraints  critical  CA:FALSE
 *     keyUsage          critical  digitalSignature
 *     extKeyUsage                 serverAuth, clientAuth
 *     subjectKeyIdentifier        SHA-1 of the subject public key bits
 *     authorityKeyIdentifier      keyIdentifier = CA's SKI
 *     subjectAltName              exactly one URI: the SPIFFE ID
 *     Custody delegation          see delegation-extension.ts
 */

const VERSION_V3 = contextExplicit(0, integer(2));
const LEAF_SUBJECT = sequence(
  tlv(TAG.SET, sequence(OID.organizationName, tlv(TAG.UTF8_STRING, new TextEncoder().encode("Custody")))),
);
/** basicConstraints + keyUsage + extKeyUsage: identical in every leaf. */
const LEAF_CONSTANT_EXTENSIONS = concat([
  extension(OID.basicConstraints, true, sequence()),
  // digitalSignature is bit 0: 0b1000_0000 with 7 unused bits.
  extension(OID.keyUsage, true, tlv(TAG.BIT_STRING, new Uint8Array([7, 0x80]))),
  extension(OID.extKeyUsage, false, sequence(OID.serverAuth, OID.clientAuth)),
]);

export interface MintInput {
  readonly ca: CertificateAuthority;
  readonly spiffeId: string;
  /** The workload's P-256 public key: SubjectPublicKeyInfo DER or a KeyObject. */
  readonly subjectPublicKey: Uint8Array | KeyObject;
  /** Positive, at most 20 octets, first bit clear. */
  readonly serial: Uint8Array;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly delegation: DelegationInfo;
}

export interface MintedSvid {
  readonly der: Uint8Array;
  readonly pem: string;
  /** Leaf followed by the CA's intermediates (what an svid.pem file holds). */
  readonly chainPem: string;
  readonly serialHex: string;
  /** Hex SHA-256 over the leaf's SubjectPublicKeyInfo DER. */
  readonly publicKeySHA256: string;
}

/** The leaf's P-256 SubjectPublicKeyInfo DER, validated (shared with serving.ts). */
export function leafSpki(key: Uint8Array | KeyObject): Uint8Array {
  if (key instanceof KeyObject) {
    if (key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== "prime256v1") {
      throw new X509Error("subjectPublicKey", "must be an EC P-256 key");
    }
    return spkiOfP256(key);
  }
  if (!(key instanceof Uint8Array))
    throw new X509Error("subjectPublicKey", "must be SPKI DER bytes or a KeyObject");
  if (key.length !== SPKI_LENGTH || !bytesEqual(key.subarray(0, SPKI_PREFIX.length), SPKI_PREFIX)) {
    throw new X509Error(
      "subjectPublicKey",
      "must be a P-256 SubjectPublicKeyInfo with an uncompressed point",
    );
  }
  if (!isOnCurve(key.subarray(SPKI_PREFIX.length))) {
    throw new X509Error("subjectPublicKey", "is not a valid P-256 public key (point not on the curve)");
  }
  return key;
}

/** A valid Date truncated to whole seconds (shared with serving.ts). */
export function wholeSeconds(date: Date, field: string): Date {
  if (!(date instanceof Date) || Number.isNaN(date.getTime()))
    throw new X509Error(field, "must be a valid Date");
  // X.509 times have no fractions (RFC 5280 §4.1.2.5); truncate rather than round up past a bound.
  return new Date(Math.floor(date.getTime() / 1000) * 1000);
}

export function mintSvid(input: MintInput): MintedSvid {
  const { ca } = input;
  const id = parseSpiffeId(input.spiffeId, "spiffeId");
  if (ca.trustDomain !== undefined && id.trustDomain !== ca.trustDomain) {
    throw new X509Error("spiffeId", `trust domain ${id.trustDomain} differs from the CA's ${ca.trustDomain}`);
  }
  const serial = encodeSerial(input.serial, "serial");
  const notBefore = wholeSeconds(input.notBefore, "notBefore");
  const notAfter = wholeSeconds(input.notAfter, "notAfter");
  if (notAfter.getTime() <= notBefore.getTime()) throw new X509Error("notAfter", "must be after notBefore");
  if (notAfter.getTime() > ca.notAfter.getTime()) {
    throw new X509Error("notAfter", `must not exceed the CA's notAfter ${ca.notAfter.toISOString()}`);
  }
  const spki = leafSpki(input.subjectPublicKey);
  const delegation = encodeDelegationExtension(input.delegation);
  const uri = Buffer.from(input.spiffeId, "utf8");

  const tbs = sequence(
    VERSION_V3,
    serial.tlv,
    ca.tbsSignatureAndIssuer,
    sequence(time(notBefore), time(notAfter)),
    LEAF_SUBJECT,
    spki,
    contextExplicit(
      3,
      sequence(
        LEAF_CONSTANT_EXTENSIONS,
        extension(
          OID.subjectKeyIdentifier,
          false,
          tlv(TAG.OCTET_STRING, keyIdentifier(spki.subarray(SPKI_PREFIX.length))),
        ),
        ca.leafAuthorityKeyIdExtension,
        extension(OID.subjectAltName, false, sequence(tlv(0x86, uri))),
        extension(OID.delegation, false, delegation),
      ),
    ),
  );
  const der = signCertificate(ca.signer, tbs);
  const pem = toPem("CERTIFICATE", der);
  return {
    der,
    pem,
    chainPem: pem + ca.intermediatesPem,
    serialHex: serial.hex,
    publicKeySHA256: createHash("sha256").update(spki).digest("hex"),
  };
}

export interface LeafKeyPair {
  /** PKCS#8 PEM: what SPIFFE libraries (go-spiffe, java-spiffe, py-spiffe) load as svid_key.pem. */
  readonly privateKeyPem: string;
  /** SubjectPublicKeyInfo DER, ready for mintSvid. */
  readonly publicKeySpki: Uint8Array;
}

/** Fresh P-256 key pair from node:crypto's CSPRNG. */
export function generateLeafKeyPair(): LeafKeyPair {
  const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const { pkcs8, spki } = encodeP256PrivateKey(privateKey);
  return { privateKeyPem: toPem("PRIVATE KEY", pkcs8), publicKeySpki: spki };
}
