import { generateKeyPairSync, X509Certificate as NodeX509 } from "node:crypto";
import * as x509 from "@peculiar/x509";
import { describe, expect, it } from "vitest";
import { generateCa, loadCa } from "../../../core/x509/ca.ts";
import { HOUR, mintSample, NOW, opensslChain, rootCa, TRUST_DOMAIN } from "./fixtures.ts";

describe("generateCa", () => {
  it("creates a self-signed P-256 root with the SPIFFE CA profile", () => {
    const g = generateCa({
      trustDomain: TRUST_DOMAIN,
      now: NOW,
      validityMs: 24 * HOUR,
      serial: new Uint8Array([0x42]),
    });
    const cert = new x509.X509Certificate(g.certPem);
    expect(cert.serialNumber).toBe("42");
    expect(cert.subject).toBe(cert.issuer);
    expect(cert.subject).toBe("O=Custody, CN=Custody CA 42");
    expect(cert.notBefore.toISOString()).toBe(NOW.toISOString());
    expect(cert.notAfter.getTime()).toBe(NOW.getTime() + 24 * HOUR);
    expect(cert.signatureAlgorithm).toMatchObject({ name: "ECDSA", hash: { name: "SHA-256" } });
    expect(cert.publicKey.algorithm).toMatchObject({ name: "ECDSA", namedCurve: "P-256" });

    const bc = cert.getExtension(x509.BasicConstraintsExtension)!;
    expect([bc.critical, bc.ca]).toEqual([true, true]);
    const ku = cert.getExtension(x509.KeyUsagesExtension)!;
    expect(ku.critical).toBe(true);
    expect(ku.usages).toBe(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign);
    const ski = cert.getExtension(x509.SubjectKeyIdentifierExtension)!.keyId;
    expect(cert.getExtension(x509.AuthorityKeyIdentifierExtension)!.keyId).toBe(ski);
    const san = cert.getExtension(x509.SubjectAlternativeNameExtension)!;
    expect(san.names.items.map((n) => n.value)).toEqual([`spiffe://${TRUST_DOMAIN}`]);

    const node = new NodeX509(g.certPem);
    expect(node.verify(node.publicKey)).toBe(true);
    expect(g.keyPem).toMatch(/^-----BEGIN PRIVATE KEY-----/);

    expect(g.ca.selfSigned).toBe(true);
    expect(g.ca.trustDomain).toBe(TRUST_DOMAIN);
    expect(g.ca.intermediatesDer).toEqual([]);
    expect(g.ca.bundleDer).toEqual([g.ca.certDer]);
    expect(Buffer.from(g.ca.subjectKeyId).toString("hex")).toBe(ski);
  });

  it.each([
    ["trust domain with a path", { trustDomain: "custody.local/x" }, "trustDomain"],
    ["upper-case trust domain", { trustDomain: "Custody.local" }, "trustDomain"],
    ["validity under a second", { validityMs: 10 }, "validityMs"],
    ["negative serial", { serial: new Uint8Array([0xff]) }, "serial"],
    ["invalid now", { now: new Date(Number.NaN) }, "now"],
  ])("rejects %s", (_name, overrides, field) => {
    const input = {
      trustDomain: TRUST_DOMAIN,
      now: NOW,
      validityMs: HOUR,
      serial: new Uint8Array([1]),
      ...overrides,
    };
    expect(() => generateCa(input)).toThrow(expect.objectContaining({ field }));
  });
});

let rsa: ReturnType<typeof opensslChain> | undefined;
const rsaChain = () => {
  rsa ??= opensslChain("rsa");
  return rsa;
};

describe("loadCa", () => {
  it("reloads a generated root from PEM with identical cached parts", () => {
    const root = rootCa();
    const again = loadCa({ certPem: root.certPem, keyPem: root.keyPem });
    expect(again.subjectDer).toEqual(root.subjectDer);
    expect(again.subjectKeyId).toEqual(root.subjectKeyId);
    expect(again.tbsSignatureAndIssuer).toEqual(root.tbsSignatureAndIssuer);
    expect(again.notAfter).toEqual(root.notAfter);
  });

  it("rejects a key that does not belong to the certificate", () => {
    const other = rootCa();
    expect(() => loadCa({ certPem: rootCa().certPem, keyPem: other.keyPem })).toThrow(
      expect.objectContaining({ field: "keyPem", message: expect.stringMatching(/does not match/) }),
    );
  });

  it("rejects a leaf certificate posing as a CA", () => {
    const { minted, keys } = mintSample(rootCa());
    expect(() => loadCa({ certPem: minted.pem, keyPem: keys.privateKeyPem })).toThrow(
      expect.objectContaining({ field: "certPem", message: expect.stringMatching(/not a CA/) }),
    );
  });

  it("rejects unreadable keys, non-PEM input and unsupported key types", () => {
    const root = rootCa();
    expect(() => loadCa({ certPem: root.certPem, keyPem: "nope" })).toThrow(
      expect.objectContaining({ field: "keyPem" }),
    );
    expect(() => loadCa({ certPem: "nope", keyPem: root.keyPem })).toThrow(
      expect.objectContaining({ field: "certPem" }),
    );
    const ed = generateKeyPairSync("ed25519").privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    expect(() => loadCa({ certPem: root.certPem, keyPem: ed })).toThrow(
      expect.objectContaining({ field: "keyPem", message: expect.stringMatching(/not supported/) }),
    );
  });

  it("loads an openssl-made intermediate (SEC1 key) under an RSA root and records chain and bundle", () => {
    const chain = rsaChain();
    const ca = loadCa({
      certPem: chain.intermediatePem,
      keyPem: chain.intermediateKeyPem,
      chainPem: chain.rootPem,
    });
    expect(ca.selfSigned).toBe(false);
    expect(ca.trustDomain).toBe(TRUST_DOMAIN);
    expect(ca.intermediatesDer).toEqual([ca.certDer]);
    expect(ca.bundleDer).toHaveLength(1);
    expect(new NodeX509(Buffer.from(ca.bundleDer[0]!)).subject).toBe("O=Acme\nCN=Acme Root");
    expect(ca.signer.hash).toBe("sha256");
  });

  it("rejects a chainPem certificate that did not issue the CA", () => {
    const chain = opensslChain("ec");
    expect(() =>
      loadCa({
        certPem: chain.intermediatePem,
        keyPem: chain.intermediateKeyPem,
        chainPem: rootCa().certPem,
      }),
    ).toThrow(
      expect.objectContaining({ field: "chainPem[0]", message: expect.stringMatching(/did not issue/) }),
    );
  });

  it("signs leaves with an RSA root key (sha256WithRSAEncryption)", () => {
    const chain = rsaChain();
    const ca = loadCa({ certPem: chain.rootPem, keyPem: chain.rootKeyPem });
    expect(ca.selfSigned).toBe(true);
    const now = new Date();
    const { minted } = mintSample(ca, {
      spiffeId: "spiffe://any.example/w",
      notBefore: now,
      notAfter: new Date(now.getTime() + HOUR),
    });
    const leaf = new x509.X509Certificate(minted.der);
    expect(leaf.signatureAlgorithm).toMatchObject({ name: "RSASSA-PKCS1-v1_5", hash: { name: "SHA-256" } });
    expect(new NodeX509(minted.der).verify(ca.publicKey)).toBe(true);
  });

  it("rejects RSA keys under 2048 bits", () => {
    const small = generateKeyPairSync("rsa", { modulusLength: 1024 }).privateKey.export({
      type: "pkcs8",
      format: "pem",
    });
    expect(() => loadCa({ certPem: rootCa().certPem, keyPem: small.toString() })).toThrow(
      expect.objectContaining({ field: "keyPem", message: expect.stringMatching(/too small/) }),
    );
  });
});
