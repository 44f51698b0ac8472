import type { KeyObject } from "node:crypto";
import type { CertificateAuthority } from "./ca.ts";
import { contextExplicit, integer, sequence, TAG, time, tlv, utf8String } from "./der.ts";
import { X509Error } from "./errors.ts";
import { leafSpki, wholeSeconds } from "./mint.ts";
import { OID } from "./oids.ts";
import { SPKI_PREFIX } from "./p256.ts";
import { toPem } from "./pem.ts";
import { encodeSerial } from "./serial.ts";
import { extension, keyIdentifier, signCertificate } from "./signing.ts";

/**
 * TLS serving certificates (RFC 5280, CA/B-style server profile) for
 * Custody's own endpoints, chiefly the admission webhook the API server calls.
 * Same builder as the SVIDs in mint.ts, different profile:
 *
 *   subject           O=Custody, CN=<first DNS name> (CN omitted when there is
 *                     no DNS name or it exceeds the 64-character CN bound)
 *   basicConstraints  critical  CA:FALSE
 *   keyUsage          critical  digitalSignature (ECDHE-ECDSA needs nothing else)
 *   extKeyUsage                 serverAuth only: this key must not pass as a client
 *   subjectKeyIdentifier, authorityKeyIdentifier
 *   subjectAltName              dNSName and iPAddress entries; never a URI, so a
 *                               serving certificate can never be taken for an SVID
 *
 * The subject is never empty, so the SAN extension need not be critical
 * (RFC 5280 §4.2.1.6). Clients (Go's crypto/x509 included) match host names
 * against the SAN only, never the CN.
 */

const VERSION_V3 = contextExplicit(0, integer(2));
const CONSTANT_EXTENSIONS = [
  extension(OID.basicConstraints, true, sequence()),
  // digitalSignature is bit 0: 0b1000_0000 with 7 unused bits.
  extension(OID.keyUsage, true, tlv(TAG.BIT_STRING, new Uint8Array([7, 0x80]))),
  extension(OID.extKeyUsage, false, sequence(OID.serverAuth)),
];
/** RFC 5280 Appendix A: ub-common-name. */
const MAX_COMMON_NAME = 64;
const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

export interface ServingCertInput {
  readonly ca: CertificateAuthority;
  /** The server's P-256 public key: SubjectPublicKeyInfo DER or a KeyObject. */
  readonly subjectPublicKey: Uint8Array | KeyObject;
  /** Host names the server answers to (lower-case RFC 1123 names, no wildcards). */
  readonly dnsNames: readonly string[];
  /** IPv4 (dotted quad) or IPv6 (RFC 4291 text) addresses, e.g. 127.0.0.1 or ::1. */
  readonly ipAddresses?: readonly string[];
  /** Positive, at most 20 octets, first bit clear. */
  readonly serial: Uint8Array;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

export interface MintedServingCert {
  readonly der: Uint8Array;
  readonly pem: string;
  /** Leaf followed by the CA's intermediates: what a TLS server presents. */
  readonly chainPem: string;
  readonly serialHex: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

/**
 * A host name as RFC 1123 §2.1 allows it (labels of letters, digits and
 * hyphens, not starting or ending with a hyphen, at most 63 octets, at most
 * 253 in all), in lower case as Kubernetes names are. Throws naming `field`.
 */
export function checkDnsName(name: unknown, field: string): string {
  if (typeof name !== "string" || name.length === 0) throw new X509Error(field, "must be a non-empty string");
  if (parseIPv4(name) !== undefined) {
    throw new X509Error(field, `"${name}" is an IP address: list it in ipAddresses, not dnsNames`);
  }
  if (name.length > 253) throw new X509Error(field, `must be at most 253 characters (got ${name.length})`);
  if (name !== name.toLowerCase()) throw new X509Error(field, `"${name}" must be lower case`);
  for (const label of name.split(".")) {
    if (!DNS_LABEL.test(label)) {
      throw new X509Error(
        field,
        `"${name}" is not an RFC 1123 host name: each dot-separated label must be 1-63 of [a-z0-9-], ` +
          "not starting or ending with '-' (no wildcards, no trailing dot)",
      );
    }
  }
  return name;
}

/** Dotted-quad IPv4 to 4 octets; undefined if `s` is not one (leading zeros are refused: octal is ambiguous). */
export function parseIPv4(s: string): Uint8Array | undefined {
  const m = /^(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})$/.exec(s);
  if (!m) return undefined;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const n = Number(m[i + 1]);
    if (n > 255) return undefined;
    out[i] = n;
  }
  return out;
}

/** RFC 4291 §2.2 text (with `::` and an optional dotted-quad tail) to 16 octets; undefined if invalid. Zones are refused. */
export function parseIPv6(s: string): Uint8Array | undefined {
  if (!/^[0-9A-Fa-f:.]+$/.test(s)) return undefined;
  const halves = s.split("::");
  if (halves.length > 2) return undefined;
  // A dotted-quad tail may only end the address.
  if (halves.length === 2 && halves[0]!.includes(".")) return undefined;
  const groups = (part: string): number[] | undefined => {
    if (part === "") return [];
    const out: number[] = [];
    const pieces = part.split(":");
    for (let i = 0; i < pieces.length; i++) {
      const p = pieces[i]!;
      if (i === pieces.length - 1 && p.includes(".")) {
        const v4 = parseIPv4(p);
        if (!v4) return undefined;
        out.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
      } else if (/^[0-9A-Fa-f]{1,4}$/.test(p)) {
        out.push(Number.parseInt(p, 16));
      } else {
        return undefined;
      }
    }
    return out;
  };
  const head = groups(halves[0]!);
  const tail = halves.length === 2 ? groups(halves[1]!) : [];
  if (!head || !tail) return undefined;
  let all: number[];
  if (halves.length === 2) {
    const missing = 8 - head.length - tail.length;
    if (missing < 1) return undefined;
    all = [...head, ...new Array<number>(missing).fill(0), ...tail];
  } else {
    all = head;
  }
  if (all.length !== 8) return undefined;
  const out = new Uint8Array(16);
  all.forEach((g, i) => {
    out[2 * i] = g >> 8;
    out[2 * i + 1] = g & 0xff;
  });
  return out;
}

/** An IP address's iPAddress octets (4 for IPv4, 16 for IPv6). Throws naming `field`. */
export function ipAddressOctets(address: unknown, field: string): Uint8Array {
  if (typeof address !== "string" || address.length === 0) {
    throw new X509Error(field, "must be a non-empty string");
  }
  const octets = parseIPv4(address) ?? (address.includes(":") ? parseIPv6(address) : undefined);
  if (!octets) {
    throw new X509Error(
      field,
      `"${address}" is not an IPv4 dotted quad or an IPv6 address (no zones, no brackets, no leading zeros)`,
    );
  }
  return octets;
}

function stringList(value: unknown, field: string): readonly unknown[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new X509Error(field, "must be an array");
  return value;
}

export function mintServingCert(input: ServingCertInput): MintedServingCert {
  const { ca } = input;
  const dnsNames = stringList(input.dnsNames, "dnsNames").map((n, i) => checkDnsName(n, `dnsNames[${i}]`));
  const ipList = stringList(input.ipAddresses, "ipAddresses");
  const ips = ipList.map((a, i) => ipAddressOctets(a, `ipAddresses[${i}]`));
  if (dnsNames.length === 0 && ips.length === 0) {
    throw new X509Error(
      "dnsNames",
      "at least one DNS name or IP address is required (the SAN is what clients check)",
    );
  }
  const seen = new Set<string>();
  dnsNames.forEach((n, i) => {
    if (seen.has(n)) throw new X509Error(`dnsNames[${i}]`, `"${n}" is listed twice`);
    seen.add(n);
  });
  ips.forEach((o, i) => {
    const key = Buffer.from(o).toString("hex");
    if (seen.has(key)) throw new X509Error(`ipAddresses[${i}]`, `"${String(ipList[i])}" is listed twice`);
    seen.add(key);
  });

  const serial = encodeSerial(input.serial, "serial");
  const notBefore = wholeSeconds(input.notBefore, "notBefore");
  const notAfter = wholeSeconds(input.notAfter, "notAfter");
  if (notAfter.getTime() <= notBefore.getTime()) throw new X509Error("notAfter", "must be after notBefore");
  if (notAfter.getTime() > ca.notAfter.getTime()) {
    throw new X509Error("notAfter", `must not exceed the CA's notAfter ${ca.notAfter.toISOString()}`);
  }
  const spki = leafSpki(input.subjectPublicKey);

  const rdns = [tlv(TAG.SET, sequence(OID.organizationName, utf8String("Custody")))];
  const cn = dnsNames[0];
  if (cn !== undefined && cn.length <= MAX_COMMON_NAME) {
    rdns.push(tlv(TAG.SET, sequence(OID.commonName, utf8String(cn))));
  }
  // GeneralName: dNSName [2] IA5String, iPAddress [7] OCTET STRING (RFC 5280 §4.2.1.6).
  const san = sequence(
    ...dnsNames.map((n) => tlv(0x82, Buffer.from(n, "ascii"))),
    ...ips.map((o) => tlv(0x87, o)),
  );

  const tbs = sequence(
    VERSION_V3,
    serial.tlv,
    ca.tbsSignatureAndIssuer,
    sequence(time(notBefore), time(notAfter)),
    sequence(...rdns),
    spki,
    contextExplicit(
      3,
      sequence(
        ...CONSTANT_EXTENSIONS,
        extension(
          OID.subjectKeyIdentifier,
          false,
          tlv(TAG.OCTET_STRING, keyIdentifier(spki.subarray(SPKI_PREFIX.length))),
        ),
        ca.leafAuthorityKeyIdExtension,
        extension(OID.subjectAltName, false, san),
      ),
    ),
  );
  const der = signCertificate(ca.signer, tbs);
  const pem = toPem("CERTIFICATE", der);
  return { der, pem, chainPem: pem + ca.intermediatesPem, serialHex: serial.hex, notBefore, notAfter };
}
