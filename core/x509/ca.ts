import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  X509Certificate,
} from "node:crypto";
import {
  findExtension,
  KEY_USAGE,
  type ParsedCertificate,
  parseBasicConstraints,
  parseCertificate,
  parseGeneralNames,
  parseKeyUsage,
  parseSubjectKeyIdentifier,
} from "./certificate.ts";
import {
  bytesEqual,
  concat,
  contextExplicit,
  integer,
  octetString,
  sequence,
  TAG,
  time,
  tlv,
  toHex,
  utf8String,
} from "./der.ts";
import { X509Error } from "./errors.ts";
import { OID } from "./oids.ts";
import { certificatesFromPem, toPem } from "./pem.ts";
import { encodeSerial } from "./serial.ts";
import {
  extension,
  keyIdentifier,
  type Signer,
  signCertificate,
  signerFor,
  spkiOf,
  subjectPublicKeyBits,
} from "./signing.ts";
import { parseSpiffeId } from "./spiffe-id.ts";

/**
 * A signing CA, parsed once. Everything the mint hot path needs is here as
 * ready-made DER so that minting only concatenates and signs.
 */
export interface CertificateAuthority {
  readonly certDer: Uint8Array;
  readonly certPem: string;
  readonly subjectDer: Uint8Array;
  readonly subjectKeyId: Uint8Array;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly publicKey: KeyObject;
  readonly selfSigned: boolean;
  /** Trust domain from the CA's own `spiffe://<td>` URI SAN, when it has one. */
  readonly trustDomain: string | undefined;
  /** Certificates a leaf's chain carries after the leaf: the CA itself if it is an intermediate, then its parents (roots excluded). */
  readonly intermediatesDer: readonly Uint8Array[];
  readonly intermediatesPem: string;
  /** Self-signed roots known for this CA (the CA itself, or roots found in chainPem). */
  readonly bundleDer: readonly Uint8Array[];
  readonly bundlePem: string;
  readonly signer: Signer;
  /** TBSCertificate fragment `signature AlgorithmIdentifier || issuer Name`. */
  readonly tbsSignatureAndIssuer: Uint8Array;
  /** Complete AuthorityKeyIdentifier extension for leaves. */
  readonly leafAuthorityKeyIdExtension: Uint8Array;
}

export interface GenerateCaInput {
  readonly trustDomain: string;
  readonly now: Date;
  readonly validityMs: number;
  /** Positive, at most 20 octets (see serial.ts). */
  readonly serial: Uint8Array;
}

export interface GeneratedCa {
  readonly ca: CertificateAuthority;
  readonly certPem: string;
  /** PKCS#8 PEM of the CA's P-256 private key. */
  readonly keyPem: string;
}

const CA_BASIC_CONSTRAINTS = extension(
  OID.basicConstraints,
  true,
  sequence(new Uint8Array([TAG.BOOLEAN, 1, 0xff])),
);
// keyCertSign (bit 5) + cRLSign (bit 6): 0b0000_0110 with 1 unused bit.
const CA_KEY_USAGE = extension(OID.keyUsage, true, tlv(TAG.BIT_STRING, new Uint8Array([1, 0x06])));

function name(attributes: ReadonlyArray<readonly [Uint8Array, string]>): Uint8Array {
  return sequence(...attributes.map(([type, value]) => tlv(TAG.SET, sequence(type, utf8String(value)))));
}

/** A self-signed ECDSA P-256 root for `spiffe://<trustDomain>`. Key generation uses node:crypto randomness. */
export function generateCa(input: GenerateCaInput): GeneratedCa {
  const { trustDomain, now, validityMs } = input;
  const td = parseSpiffeId(`spiffe://${trustDomain}`, "trustDomain");
  if (td.path !== "") throw new X509Error("trustDomain", "must not contain a path");
  if (!(now instanceof Date) || Number.isNaN(now.getTime()))
    throw new X509Error("now", "must be a valid Date");
  if (!Number.isFinite(validityMs) || validityMs < 1000)
    throw new X509Error("validityMs", "must be at least 1000");
  const serial = encodeSerial(input.serial, "serial");
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const spki = spkiOf(publicKey);
  const ski = keyIdentifier(subjectPublicKeyBits(spki, "publicKey"));
  const signer = signerFor(privateKey, "key");
  const subject = name([
    [OID.organizationName, "Custody"],
    [OID.commonName, `Custody CA ${toHex(serial.content).slice(0, 16)}`],
  ]);
  const notBefore = new Date(Math.floor(now.getTime() / 1000) * 1000);
  const notAfter = new Date(Math.floor((now.getTime() + validityMs) / 1000) * 1000);
  const tbs = sequence(
    contextExplicit(0, integer(2)),
    serial.tlv,
    signer.algorithmIdentifier,
    subject,
    sequence(time(notBefore), time(notAfter)),
    subject,
    spki,
    contextExplicit(
      3,
      sequence(
        CA_BASIC_CONSTRAINTS,
        CA_KEY_USAGE,
        extension(OID.subjectKeyIdentifier, false, octetString(ski)),
        extension(OID.authorityKeyIdentifier, false, sequence(tlv(0x80, ski))),
        extension(
          OID.subjectAltName,
          false,
          sequence(tlv(0x86, new TextEncoder().encode(`spiffe://${trustDomain}`))),
        ),
      ),
    ),
  );
  const certPem = toPem("CERTIFICATE", signCertificate(signer, tbs));
  const keyPem = privateKey.export({ type: "pkcs8", format: "pem" }).toString();
  return { ca: loadCa({ certPem, keyPem }), certPem, keyPem };
}

export interface LoadCaInput {
  /** The signing CA certificate (first CERTIFICATE block is used). */
  readonly certPem: string;
  /** Its private key: PKCS#8, SEC1 or PKCS#1 PEM. */
  readonly keyPem: string;
  /** Certificates above the CA, nearest first, optionally ending at the root. */
  readonly chainPem?: string;
}

/** Self-signed: issues itself and its signature verifies under its own key (any algorithm node supports). */
function isSelfSigned(cert: X509Certificate): boolean {
  try {
    return cert.checkIssued(cert) && cert.verify(cert.publicKey);
  } catch {
    return false;
  }
}

function requireCa(cert: ParsedCertificate, field: string): void {
  if (cert.version !== 3) throw new X509Error(field, "must be an X.509 v3 certificate");
  const bc = findExtension(cert, OID.basicConstraints);
  if (!bc || !parseBasicConstraints(bc.value, `${field}.basicConstraints`).ca) {
    throw new X509Error(field, "is not a CA certificate (basicConstraints cA must be TRUE)");
  }
  const ku = findExtension(cert, OID.keyUsage);
  if (ku && !parseKeyUsage(ku.value, `${field}.keyUsage`).has(KEY_USAGE.keyCertSign)) {
    throw new X509Error(field, "keyUsage lacks keyCertSign");
  }
}

/** Loads a user-supplied root or intermediate CA; validates it can sign leaves. */
export function loadCa(input: LoadCaInput): CertificateAuthority {
  const [certDer] = certificatesFromPem(input.certPem, "certPem");
  const cert = parseCertificate(certDer!, "certPem");
  requireCa(cert, "certPem");

  let key: KeyObject;
  try {
    key = createPrivateKey(input.keyPem);
  } catch (e) {
    throw new X509Error("keyPem", `is not a readable private key (${(e as Error).message})`);
  }
  const signer = signerFor(key, "keyPem");
  const publicKey = createPublicKey({ key: Buffer.from(cert.spki), format: "der", type: "spki" });
  if (!bytesEqual(spkiOf(key), spkiOf(publicKey))) {
    throw new X509Error("keyPem", "does not match the public key of certPem");
  }

  const skiExt = findExtension(cert, OID.subjectKeyIdentifier);
  const subjectKeyId = skiExt
    ? parseSubjectKeyIdentifier(skiExt.value, "certPem.subjectKeyIdentifier").slice()
    : keyIdentifier(subjectPublicKeyBits(cert.spki, "certPem.subjectPublicKeyInfo"));

  let trustDomain: string | undefined;
  const san = findExtension(cert, OID.subjectAltName);
  if (san) {
    const uris = parseGeneralNames(san.value, "certPem.subjectAltName").filter((n) => n.type === 6);
    const spiffe = uris.map((u) => new TextDecoder().decode(u.value)).find((u) => u.startsWith("spiffe://"));
    if (spiffe) trustDomain = parseSpiffeId(spiffe, "certPem.subjectAltName").trustDomain;
  }

  const selfSigned = isSelfSigned(new X509Certificate(certDer!));
  const chain = input.chainPem ? certificatesFromPem(input.chainPem, "chainPem") : [];
  const intermediatesDer: Uint8Array[] = selfSigned ? [] : [certDer!];
  const bundleDer: Uint8Array[] = selfSigned ? [certDer!] : [];
  let child = new X509Certificate(certDer!);
  chain.forEach((der, i) => {
    const field = `chainPem[${i}]`;
    // A chain that repeats the CA itself (a self-signed root stored as both
    // tls.crt and ca.crt) adds nothing: never publish a root twice.
    if (bytesEqual(der, certDer!) || bundleDer.some((b) => bytesEqual(b, der))) return;
    const parsed = parseCertificate(der, field);
    requireCa(parsed, field);
    const parent = new X509Certificate(der);
    if (!child.checkIssued(parent) || !child.verify(parent.publicKey)) {
      throw new X509Error(field, `did not issue ${i === 0 ? "certPem" : `chainPem[${i - 1}]`}`);
    }
    if (isSelfSigned(parent)) bundleDer.push(der);
    else intermediatesDer.push(der);
    child = parent;
  });

  return {
    certDer: certDer!,
    certPem: toPem("CERTIFICATE", certDer!),
    subjectDer: cert.subject,
    subjectKeyId,
    notBefore: cert.notBefore,
    notAfter: cert.notAfter,
    publicKey,
    selfSigned,
    trustDomain,
    intermediatesDer,
    intermediatesPem: intermediatesDer.map((d) => toPem("CERTIFICATE", d)).join(""),
    bundleDer,
    bundlePem: bundleDer.map((d) => toPem("CERTIFICATE", d)).join(""),
    signer,
    tbsSignatureAndIssuer: concat([signer.algorithmIdentifier, cert.subject]),
    leafAuthorityKeyIdExtension: extension(
      OID.authorityKeyIdentifier,
      false,
      sequence(tlv(0x80, subjectKeyId)),
    ),
  };
}
