import { bytesEqual, checkInteger, DerReader, type Element, oidToString, TAG } from "./der.ts";
import { X509Error } from "./errors.ts";

/**
 * Strict structural parse of an X.509 v3 certificate (RFC 5280 §4.1) into the
 * raw pieces that signing and verification need. Semantics (chains, usage)
 * are checked by verify.ts / ca.ts.
 */

export interface Extension {
  /** Dotted OID. */
  readonly oid: string;
  /** Full OID TLV, to compare against OID constants without decoding. */
  readonly oidDer: Uint8Array;
  readonly critical: boolean;
  readonly value: Uint8Array;
}

export interface ParsedCertificate {
  readonly der: Uint8Array;
  readonly tbs: Uint8Array;
  /** AlgorithmIdentifier TLV of the outer signatureAlgorithm. */
  readonly signatureAlgorithm: Uint8Array;
  readonly signature: Uint8Array;
  readonly version: number;
  /** Serial INTEGER content octets (minimal two's complement). */
  readonly serial: Uint8Array;
  readonly issuer: Uint8Array;
  readonly subject: Uint8Array;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly spki: Uint8Array;
  readonly extensions: readonly Extension[];
}

export function parseCertificate(der: Uint8Array, field = "certificate"): ParsedCertificate {
  const top = new DerReader(der, field);
  const cert = top.enter(TAG.SEQUENCE, "");
  top.finish();
  const tbsEl = cert.expect(TAG.SEQUENCE, "tbsCertificate");
  const signatureAlgorithm = cert.expect(TAG.SEQUENCE, "signatureAlgorithm").raw;
  const sigBits = cert.expect(TAG.BIT_STRING, "signatureValue").content;
  cert.finish();
  if (sigBits.length < 1 || sigBits[0] !== 0) {
    throw new X509Error(`${field}.signatureValue`, "BIT STRING must have 0 unused bits");
  }

  const t = new DerReader(tbsEl.content, `${field}.tbsCertificate`);
  let version = 1;
  const versionEl = t.optional(0xa0, "version");
  if (versionEl) {
    const v = new DerReader(versionEl.content, `${field}.tbsCertificate.version`);
    version = v.smallUnsigned("") + 1;
    v.finish();
  }
  const serialEl = t.expect(TAG.INTEGER, "serialNumber");
  checkInteger(serialEl.content, (rule) => {
    throw new X509Error(`${field}.tbsCertificate.serialNumber`, rule);
  });
  const innerAlg = t.expect(TAG.SEQUENCE, "signature").raw;
  if (!bytesEqual(innerAlg, signatureAlgorithm)) {
    throw new X509Error(
      `${field}.signatureAlgorithm`,
      "differs from tbsCertificate.signature (RFC 5280 §4.1.1.2)",
    );
  }
  const issuer = t.expect(TAG.SEQUENCE, "issuer").raw;
  const validity = t.enter(TAG.SEQUENCE, "validity");
  const notBefore = validity.time("notBefore");
  const notAfter = validity.time("notAfter");
  validity.finish();
  const subject = t.expect(TAG.SEQUENCE, "subject").raw;
  const spki = t.expect(TAG.SEQUENCE, "subjectPublicKeyInfo").raw;
  t.optional(0x81, "issuerUniqueID");
  t.optional(0x82, "subjectUniqueID");
  const extensions: Extension[] = [];
  const extsEl = t.optional(0xa3, "extensions");
  t.finish();
  if (extsEl) {
    const wrapper = new DerReader(extsEl.content, `${field}.extensions`);
    const list = wrapper.enter(TAG.SEQUENCE, "");
    wrapper.finish();
    if (list.atEnd()) throw new X509Error(`${field}.extensions`, "must not be empty when present");
    const seen = new Set<string>();
    while (!list.atEnd()) {
      const e = list.enter(TAG.SEQUENCE, `[${extensions.length}]`);
      const oidEl: Element = e.expect(TAG.OID, "extnID");
      const oid = oidToString(oidEl.content);
      let critical = false;
      if (e.peekTag() === TAG.BOOLEAN) {
        critical = e.boolean("critical");
        if (!critical) e.fail("critical", "DER omits a FALSE default");
      }
      const value = e.expect(TAG.OCTET_STRING, "extnValue").content;
      e.finish();
      if (seen.has(oid)) throw new X509Error(`${field}.extensions`, `extension ${oid} appears twice`);
      seen.add(oid);
      extensions.push({ oid, oidDer: oidEl.raw, critical, value });
    }
  }
  if (version !== 3 && extensions.length > 0) {
    throw new X509Error(`${field}.tbsCertificate.version`, "extensions require version 3");
  }
  return {
    der,
    tbs: tbsEl.raw,
    signatureAlgorithm,
    signature: sigBits.subarray(1),
    version,
    serial: serialEl.content,
    issuer,
    subject,
    notBefore,
    notAfter,
    spki,
    extensions,
  };
}

export function findExtension(cert: ParsedCertificate, oidDer: Uint8Array): Extension | undefined {
  return cert.extensions.find((e) => bytesEqual(e.oidDer, oidDer));
}

export interface BasicConstraints {
  readonly ca: boolean;
  readonly pathLen?: number;
}

export function parseBasicConstraints(value: Uint8Array, field: string): BasicConstraints {
  const outer = new DerReader(value, field);
  const r = outer.enter(TAG.SEQUENCE, "");
  outer.finish();
  let ca = false;
  if (r.peekTag() === TAG.BOOLEAN) {
    ca = r.boolean("cA");
    if (!ca) r.fail("cA", "DER omits a FALSE default");
  }
  const pathLen = r.atEnd() ? undefined : r.smallUnsigned("pathLenConstraint");
  r.finish();
  return pathLen === undefined ? { ca } : { ca, pathLen };
}

export const KEY_USAGE = {
  digitalSignature: 0,
  nonRepudiation: 1,
  keyEncipherment: 2,
  dataEncipherment: 3,
  keyAgreement: 4,
  keyCertSign: 5,
  cRLSign: 6,
  encipherOnly: 7,
  decipherOnly: 8,
} as const;

/** Set of KeyUsage bit numbers. */
export function parseKeyUsage(value: Uint8Array, field: string): Set<number> {
  const outer = new DerReader(value, field);
  const { content } = outer.expect(TAG.BIT_STRING, "");
  outer.finish();
  if (content.length < 1 || content[0]! > 7) throw new X509Error(field, "malformed BIT STRING");
  const bits = new Set<number>();
  for (let i = 1; i < content.length; i++) {
    for (let b = 0; b < 8; b++) if (content[i]! & (0x80 >> b)) bits.add((i - 1) * 8 + b);
  }
  return bits;
}

export interface GeneralName {
  /** Context tag number: 1 rfc822Name, 2 dNSName, 6 URI, 7 iPAddress, ... */
  readonly type: number;
  readonly value: Uint8Array;
}

export function parseGeneralNames(value: Uint8Array, field: string): GeneralName[] {
  const outer = new DerReader(value, field);
  const r = outer.enter(TAG.SEQUENCE, "");
  outer.finish();
  const names: GeneralName[] = [];
  while (!r.atEnd()) {
    const el = r.next(`[${names.length}]`);
    if ((el.tag & 0xc0) !== 0x80) r.fail(`[${names.length}]`, "GeneralName must be context-tagged");
    names.push({ type: el.tag & 0x1f, value: el.content });
  }
  if (names.length === 0) throw new X509Error(field, "must name at least one GeneralName");
  return names;
}

export function parseSubjectKeyIdentifier(value: Uint8Array, field: string): Uint8Array {
  const outer = new DerReader(value, field);
  const { content } = outer.expect(TAG.OCTET_STRING, "");
  outer.finish();
  return content;
}

export function parseAuthorityKeyIdentifier(value: Uint8Array, field: string): Uint8Array | undefined {
  const outer = new DerReader(value, field);
  const r = outer.enter(TAG.SEQUENCE, "");
  outer.finish();
  return r.optional(0x80, "keyIdentifier")?.content;
}
