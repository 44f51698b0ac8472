import { oid } from "./der.ts";

/**
 * Custody's private OID arc is the UUID a4592c78-5017-45d3-8fc2-c4652e159062.
 * Its ITU-T X.667 form, 2.25.218456407687324801025850854522593054818, cannot be
 * used inside certificates: Go's crypto/x509 (and so go-spiffe) rejects a whole
 * certificate whose extension OID has an arc of 2^31 or more ("x509: malformed
 * extension OID field"). So X.509 uses the same UUID under Microsoft's
 * registration-free GUID arc 1.2.840.113556.1.8000.2554 (the UUID split into
 * 16,16,16,16,16,24,24-bit arcs), whose arcs all fit in 31 bits.
 */
export const CUSTODY_UUID_ARC = "2.25.218456407687324801025850854522593054818";
export const CUSTODY_X509_ARC = "1.2.840.113556.1.8000.2554.42073.11384.20503.17875.36802.12870958.1413218";
export const DELEGATION_EXTENSION_OID = `${CUSTODY_X509_ARC}.1.1`;

export const OID = {
  basicConstraints: oid("2.5.29.19"),
  keyUsage: oid("2.5.29.15"),
  extKeyUsage: oid("2.5.29.37"),
  subjectKeyIdentifier: oid("2.5.29.14"),
  authorityKeyIdentifier: oid("2.5.29.35"),
  subjectAltName: oid("2.5.29.17"),
  delegation: oid(DELEGATION_EXTENSION_OID),
  serverAuth: oid("1.3.6.1.5.5.7.3.1"),
  clientAuth: oid("1.3.6.1.5.5.7.3.2"),
  organizationName: oid("2.5.4.10"),
  commonName: oid("2.5.4.3"),
  ecPublicKey: oid("1.2.840.10045.2.1"),
  prime256v1: oid("1.2.840.10045.3.1.7"),
  secp384r1: oid("1.3.132.0.34"),
  rsaEncryption: oid("1.2.840.113549.1.1.1"),
  ecdsaWithSha256: oid("1.2.840.10045.4.3.2"),
  ecdsaWithSha384: oid("1.2.840.10045.4.3.3"),
  sha256WithRsa: oid("1.2.840.113549.1.1.11"),
} as const;
