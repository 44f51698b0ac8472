import { createHash, createPublicKey, X509Certificate as NodeX509 } from "node:crypto";
import * as x509 from "@peculiar/x509";
import { beforeAll, describe, expect, it } from "vitest";
import type { CertificateAuthority } from "../../../core/x509/ca.ts";
import { decodeDelegationExtension } from "../../../core/x509/delegation-extension.ts";
import { X509Error } from "../../../core/x509/errors.ts";
import { generateLeafKeyPair, mintSvid } from "../../../core/x509/mint.ts";
import { DELEGATION_EXTENSION_OID } from "../../../core/x509/oids.ts";
import { fromPem } from "../../../core/x509/pem.ts";
import { HOUR, mintSample, NOW, rootCa, SPIFFE_ID, sampleDelegation } from "./fixtures.ts";

let ca: CertificateAuthority;
beforeAll(() => {
  ca = rootCa();
});

describe("mintSvid profile", () => {
  it("produces a certificate every property of which matches the X.509-SVID profile", () => {
    const serial = new Uint8Array([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08]);
    const { keys, minted } = mintSample(ca, { serial });
    const cert = new x509.X509Certificate(minted.der);

    expect(minted.serialHex).toBe("0102030405060708");
    expect(cert.serialNumber).toBe("0102030405060708");
    expect(cert.subject).toBe("O=Custody");
    expect(cert.issuer).toBe(new x509.X509Certificate(ca.certDer).subject);
    expect(cert.notBefore.toISOString()).toBe(NOW.toISOString());
    expect(cert.notAfter.toISOString()).toBe(new Date(NOW.getTime() + HOUR).toISOString());
    expect(cert.signatureAlgorithm).toMatchObject({ name: "ECDSA", hash: { name: "SHA-256" } });
    expect(new Uint8Array(cert.publicKey.rawData)).toEqual(keys.publicKeySpki);

    const ids = cert.extensions.map((e) => e.type);
    expect(ids).toEqual([
      "2.5.29.19",
      "2.5.29.15",
      "2.5.29.37",
      "2.5.29.14",
      "2.5.29.35",
      "2.5.29.17",
      DELEGATION_EXTENSION_OID,
    ]);

    const bc = cert.getExtension(x509.BasicConstraintsExtension)!;
    expect(bc.critical).toBe(true);
    expect(bc.ca).toBe(false);

    const ku = cert.getExtension(x509.KeyUsagesExtension)!;
    expect(ku.critical).toBe(true);
    expect(ku.usages).toBe(x509.KeyUsageFlags.digitalSignature);

    const eku = cert.getExtension(x509.ExtendedKeyUsageExtension)!;
    expect(eku.critical).toBe(false);
    expect(eku.usages).toEqual([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]);

    const san = cert.getExtension(x509.SubjectAlternativeNameExtension)!;
    expect(san.critical).toBe(false); // subject is non-empty
    expect(san.names.items.map((n) => [n.type, n.value])).toEqual([["url", SPIFFE_ID]]);

    const ski = cert.getExtension(x509.SubjectKeyIdentifierExtension)!;
    expect(ski.keyId).toHaveLength(40);
    const aki = cert.getExtension(x509.AuthorityKeyIdentifierExtension)!;
    expect(aki.keyId).toBe(Buffer.from(ca.subjectKeyId).toString("hex"));
    expect(aki.keyId).toBe(
      new x509.X509Certificate(ca.certDer).getExtension(x509.SubjectKeyIdentifierExtension)!.keyId,
    );

    const delegation = cert.getExtension(DELEGATION_EXTENSION_OID)!;
    expect(delegation.critical).toBe(false);
    expect(decodeDelegationExtension(new Uint8Array(delegation.value))).toEqual(sampleDelegation());
  });

  it("is signed by the CA key (node:crypto X509Certificate.verify) and is a v3 non-CA", () => {
    const { minted } = mintSample(ca);
    const leaf = new NodeX509(minted.der);
    expect(leaf.verify(ca.publicKey)).toBe(true);
    expect(leaf.checkIssued(new NodeX509(ca.certDer))).toBe(true);
    expect(leaf.ca).toBe(false);
    expect(leaf.subjectAltName).toBe(`URI:${SPIFFE_ID}`);
    expect(leaf.keyUsage).toEqual(["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]);
    // A signature by another CA's key does not verify.
    expect(leaf.verify(rootCa().publicKey)).toBe(false);
    // Version byte: tbsCertificate starts with [0] { INTEGER 2 }.
    expect(leaf.raw.toString("hex")).toMatch(/^3082....3082....a003020102/);
  });

  it("returns PEM of the same DER, the key fingerprint and a chain PEM", () => {
    const { keys, minted } = mintSample(ca);
    const blocks = fromPem(minted.pem);
    expect(blocks).toHaveLength(1);
    expect(blocks[0]!.der).toEqual(minted.der);
    expect(minted.chainPem).toBe(minted.pem); // root CA: no intermediates to carry
    expect(minted.publicKeySHA256).toBe(createHash("sha256").update(keys.publicKeySpki).digest("hex"));
  });

  it("accepts the subject key as a KeyObject", () => {
    const keys = generateLeafKeyPair();
    const key = createPublicKey({ key: Buffer.from(keys.publicKeySpki), format: "der", type: "spki" });
    const { minted } = mintSample(ca, { subjectPublicKey: key });
    expect(
      new Uint8Array(new NodeX509(minted.der).publicKey.export({ type: "spki", format: "der" })),
    ).toEqual(keys.publicKeySpki);
  });

  it("generateLeafKeyPair returns a PKCS#8 PEM private key matching the SPKI", () => {
    const keys = generateLeafKeyPair();
    expect(keys.privateKeyPem).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    const pub = createPublicKey(keys.privateKeyPem).export({ type: "spki", format: "der" });
    expect(new Uint8Array(pub)).toEqual(keys.publicKeySpki);
    expect(keys.publicKeySpki).toHaveLength(91);
  });

  it("truncates fractional seconds and encodes years from 2050 as GeneralizedTime", () => {
    const far = rootCa(new Date("2049-12-31T23:00:00.000Z"));
    const { minted } = mintSample(far, {
      notBefore: new Date("2049-12-31T23:30:00.900Z"),
      notAfter: new Date("2050-01-01T00:30:00.999Z"),
    });
    const cert = new x509.X509Certificate(minted.der);
    expect(cert.notBefore.toISOString()).toBe("2049-12-31T23:30:00.000Z");
    expect(cert.notAfter.toISOString()).toBe("2050-01-01T00:30:00.000Z");
    const hex = Buffer.from(minted.der).toString("hex");
    expect(hex).toContain(Buffer.from("491231233000Z").toString("hex")); // UTCTime
    expect(hex).toContain(Buffer.from("20500101003000Z").toString("hex")); // GeneralizedTime
  });
});

describe("mintSvid input rules", () => {
  const cases: Array<[string, () => unknown, string]> = [
    [
      "notAfter beyond the CA",
      () => mintSample(ca, { notAfter: new Date(ca.notAfter.getTime() + 1000) }),
      "notAfter",
    ],
    [
      "notAfter before notBefore",
      () => mintSample(ca, { notAfter: new Date(NOW.getTime() - 1000) }),
      "notAfter",
    ],
    ["serial with first bit set", () => mintSample(ca, { serial: new Uint8Array([0x80, 1]) }), "serial"],
    ["serial of 21 octets", () => mintSample(ca, { serial: new Uint8Array(21).fill(1) }), "serial"],
    ["zero serial", () => mintSample(ca, { serial: new Uint8Array([0, 0]) }), "serial"],
    ["empty serial", () => mintSample(ca, { serial: new Uint8Array() }), "serial"],
    ["non-SPIFFE URI", () => mintSample(ca, { spiffeId: "https://custody.local/x" }), "spiffeId"],
    ["dot-dot path", () => mintSample(ca, { spiffeId: "spiffe://custody.local/ns/../x" }), "spiffeId"],
    ["foreign trust domain", () => mintSample(ca, { spiffeId: "spiffe://other.example/ns/a" }), "spiffeId"],
    [
      "RSA-sized garbage key",
      () => mintSample(ca, { subjectPublicKey: new Uint8Array(294) }),
      "subjectPublicKey",
    ],
    [
      "point not on the curve",
      () => {
        const spki = generateLeafKeyPair().publicKeySpki.slice();
        spki[90] = spki[90]! ^ 1;
        return mintSample(ca, { subjectPublicKey: spki });
      },
      "subjectPublicKey",
    ],
    [
      "bad delegation digest",
      () => mintSample(ca, { delegation: sampleDelegation({ specDigest: new Uint8Array(3) }) }),
      "delegation.specDigest",
    ],
  ];
  it.each(cases)("rejects %s", (_name, run, field) => {
    expect(run).toThrow(X509Error);
    expect(run).toThrow(expect.objectContaining({ field }));
  });

  it("keeps a 20-octet serial at 20 octets and strips redundant leading zeros", () => {
    const twenty = new Uint8Array(20).fill(0x7f);
    expect(mintSample(ca, { serial: twenty }).minted.serialHex).toBe("7f".repeat(20));
    expect(mintSample(ca, { serial: new Uint8Array([0, 0, 0x05]) }).minted.serialHex).toBe("05");
    // A zero octet that keeps the value positive is required by DER and stays.
    expect(mintSample(ca, { serial: new Uint8Array([0, 0x85]) }).minted.serialHex).toBe("0085");
  });

  it("uses the caller's times as given (no clock): a future-dated certificate", () => {
    const notBefore = new Date(NOW.getTime() + 2 * HOUR);
    const minted = mintSvid({
      ca,
      spiffeId: SPIFFE_ID,
      subjectPublicKey: generateLeafKeyPair().publicKeySpki,
      serial: new Uint8Array([9]),
      notBefore,
      notAfter: new Date(NOW.getTime() + 3 * HOUR),
      delegation: sampleDelegation(),
    });
    expect(new NodeX509(minted.der).validFromDate.toISOString()).toBe(notBefore.toISOString());
  });
});
