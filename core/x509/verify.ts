import { createPublicKey, type KeyObject, verify } from "node:crypto";
import {
  findExtension,
  KEY_USAGE,
  type ParsedCertificate,
  parseAuthorityKeyIdentifier,
  parseBasicConstraints,
  parseCertificate,
  parseGeneralNames,
  parseKeyUsage,
  parseSubjectKeyIdentifier,
} from "./certificate.ts";
import { type DelegationInfo, decodeDelegationExtension } from "./delegation-extension.ts";
import { bytesEqual, sequence, toHex } from "./der.ts";
import { X509Error } from "./errors.ts";
import { OID } from "./oids.ts";
import { parseSpiffeId } from "./spiffe-id.ts";

/**
 * Verifies a Custody X.509-SVID the way a SPIFFE relying party would (chain to
 * the bundle, validity at `now`, SVID leaf rules), then decodes the
 * delegation extension. Pure: the time is a parameter.
 */

export interface VerifySvidInput {
  readonly certDer: Uint8Array;
  /** Trusted CA certificates (DER), e.g. the trust domain's X.509 bundle. */
  readonly bundle: readonly Uint8Array[];
  /** Untrusted intermediates that may sit between the leaf and the bundle. */
  readonly intermediates?: readonly Uint8Array[];
  readonly now: Date;
}

export interface VerifiedSvid {
  readonly spiffeId: string;
  readonly trustDomain: string;
  readonly serialHex: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly publicKeySpki: Uint8Array;
  readonly delegation: DelegationInfo;
  /** DER of the certificates from the leaf's issuer up to the trusted anchor. */
  readonly chain: readonly Uint8Array[];
}

const MAX_INTERMEDIATES = 4;
const KNOWN_LEAF_EXTENSIONS = [
  OID.basicConstraints,
  OID.keyUsage,
  OID.extKeyUsage,
  OID.subjectKeyIdentifier,
  OID.authorityKeyIdentifier,
  OID.subjectAltName,
  OID.delegation,
];

const ALGORITHMS: ReadonlyArray<readonly [Uint8Array, string]> = [
  [sequence(OID.ecdsaWithSha256), "sha256"],
  [sequence(OID.ecdsaWithSha384), "sha384"],
  [sequence(OID.sha256WithRsa, new Uint8Array([0x05, 0])), "sha256"],
];

function signedBy(cert: ParsedCertificate, issuerKey: KeyObject): boolean {
  const hash = ALGORITHMS.find(([alg]) => bytesEqual(alg, cert.signatureAlgorithm))?.[1];
  if (!hash) return false;
  try {
    const key =
      issuerKey.asymmetricKeyType === "ec" ? { key: issuerKey, dsaEncoding: "der" as const } : issuerKey;
    return verify(hash, cert.tbs, key, cert.signature);
  } catch {
    return false;
  }
}

function checkTime(cert: ParsedCertificate, now: Date, field: string): void {
  if (now.getTime() < cert.notBefore.getTime()) {
    throw new X509Error(field, `not valid before ${cert.notBefore.toISOString()} (now ${now.toISOString()})`);
  }
  if (now.getTime() > cert.notAfter.getTime()) {
    throw new X509Error(field, `expired at ${cert.notAfter.toISOString()} (now ${now.toISOString()})`);
  }
}

function checkIssuerIsCa(cert: ParsedCertificate, field: string, below: number): void {
  const bc = findExtension(cert, OID.basicConstraints);
  const constraints = bc && parseBasicConstraints(bc.value, `${field}.basicConstraints`);
  if (!constraints?.ca) throw new X509Error(field, "is not a CA (basicConstraints cA must be TRUE)");
  if (constraints.pathLen !== undefined && below > constraints.pathLen) {
    throw new X509Error(
      field,
      `pathLenConstraint ${constraints.pathLen} allows fewer intermediates below it`,
    );
  }
  const ku = findExtension(cert, OID.keyUsage);
  if (ku && !parseKeyUsage(ku.value, `${field}.keyUsage`).has(KEY_USAGE.keyCertSign)) {
    throw new X509Error(field, "keyUsage lacks keyCertSign");
  }
}

function keyOf(cert: ParsedCertificate): KeyObject {
  return createPublicKey({ key: Buffer.from(cert.spki), format: "der", type: "spki" });
}

/** Candidates whose subject names the cert's issuer (and, when both are known, whose SKI matches its AKI). */
function issuersOf(cert: ParsedCertificate, pool: readonly ParsedCertificate[]): ParsedCertificate[] {
  const akiExt = findExtension(cert, OID.authorityKeyIdentifier);
  const aki = akiExt && parseAuthorityKeyIdentifier(akiExt.value, "authorityKeyIdentifier");
  return pool.filter((candidate) => {
    if (!bytesEqual(candidate.subject, cert.issuer)) return false;
    const skiExt = findExtension(candidate, OID.subjectKeyIdentifier);
    if (!aki || !skiExt) return true;
    return bytesEqual(parseSubjectKeyIdentifier(skiExt.value, "subjectKeyIdentifier"), aki);
  });
}

export function verifySvid(input: VerifySvidInput): VerifiedSvid {
  const { now } = input;
  if (!(now instanceof Date) || Number.isNaN(now.getTime()))
    throw new X509Error("now", "must be a valid Date");
  const leaf = parseCertificate(input.certDer, "certDer");
  const anchors = input.bundle.map((der, i) => parseCertificate(der, `bundle[${i}]`));
  const intermediates = (input.intermediates ?? []).map((der, i) =>
    parseCertificate(der, `intermediates[${i}]`),
  );
  if (anchors.length === 0) throw new X509Error("bundle", "must hold at least one CA certificate");

  // Leaf rules (SPIFFE X509-SVID §4, §5).
  if (leaf.version !== 3) throw new X509Error("certDer", "must be an X.509 v3 certificate");
  for (const ext of leaf.extensions) {
    if (ext.critical && !KNOWN_LEAF_EXTENSIONS.some((k) => bytesEqual(k, ext.oidDer))) {
      throw new X509Error("certDer.extensions", `unknown critical extension ${ext.oid}`);
    }
  }
  const bc = findExtension(leaf, OID.basicConstraints);
  if (bc && parseBasicConstraints(bc.value, "certDer.basicConstraints").ca) {
    throw new X509Error("certDer.basicConstraints", "leaf SVID must not be a CA");
  }
  const kuExt = findExtension(leaf, OID.keyUsage);
  if (!kuExt) throw new X509Error("certDer.keyUsage", "is required on a leaf SVID");
  const ku = parseKeyUsage(kuExt.value, "certDer.keyUsage");
  if (!ku.has(KEY_USAGE.digitalSignature))
    throw new X509Error("certDer.keyUsage", "must include digitalSignature");
  if (ku.has(KEY_USAGE.keyCertSign) || ku.has(KEY_USAGE.cRLSign)) {
    throw new X509Error("certDer.keyUsage", "leaf SVID must not have keyCertSign or cRLSign");
  }
  const sanExt = findExtension(leaf, OID.subjectAltName);
  if (!sanExt) throw new X509Error("certDer.subjectAltName", "is required (it carries the SPIFFE ID)");
  const uris = parseGeneralNames(sanExt.value, "certDer.subjectAltName").filter((n) => n.type === 6);
  if (uris.length !== 1) {
    throw new X509Error("certDer.subjectAltName", `must hold exactly one URI (found ${uris.length})`);
  }
  const spiffeId = new TextDecoder("utf-8", { fatal: true }).decode(uris[0]!.value);
  const { trustDomain } = parseSpiffeId(spiffeId, "certDer.subjectAltName");
  if (bytesEqual(leaf.subject, sequence()) && !sanExt.critical) {
    throw new X509Error(
      "certDer.subjectAltName",
      "must be critical when the subject is empty (RFC 5280 §4.2.1.6)",
    );
  }
  const delegationExt = findExtension(leaf, OID.delegation);
  if (!delegationExt) throw new X509Error("certDer.delegation", "Custody delegation extension is missing");
  const delegation = decodeDelegationExtension(delegationExt.value);
  checkTime(leaf, now, "certDer");

  // Chain building: depth-first over intermediates, ending at a bundle certificate.
  const path: ParsedCertificate[] = [];
  const extend = (cert: ParsedCertificate, depth: number): boolean => {
    for (const anchor of issuersOf(cert, anchors)) {
      if (signedBy(cert, keyOf(anchor))) {
        checkIssuerIsCa(anchor, "bundle", depth);
        checkTime(anchor, now, "bundle");
        path.push(anchor);
        return true;
      }
    }
    if (depth >= MAX_INTERMEDIATES) return false;
    for (const next of issuersOf(cert, intermediates)) {
      if (path.includes(next) || !signedBy(cert, keyOf(next))) continue;
      checkIssuerIsCa(next, "intermediates", depth);
      checkTime(next, now, "intermediates");
      path.push(next);
      if (extend(next, depth + 1)) return true;
      path.pop();
    }
    return false;
  };
  if (!extend(leaf, 0)) {
    throw new X509Error(
      "certDer",
      "does not chain to a certificate in the bundle (issuer or signature mismatch)",
    );
  }

  return {
    spiffeId,
    trustDomain,
    serialHex: toHex(leaf.serial),
    notBefore: leaf.notBefore,
    notAfter: leaf.notAfter,
    publicKeySpki: leaf.spki,
    delegation,
    chain: path.map((c) => c.der),
  };
}
