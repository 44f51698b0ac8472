import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { type CertificateAuthority, loadCa } from "../../../core/x509/ca.ts";
import { X509Error } from "../../../core/x509/errors.ts";
import { certificatesFromPem } from "../../../core/x509/pem.ts";
import { verifySvid } from "../../../core/x509/verify.ts";
import {
  HOUR,
  mintSample,
  NOW,
  openssl,
  opensslChain,
  rootCa,
  SPIFFE_ID,
  sampleDelegation,
  tempDir,
} from "./fixtures.ts";

let ca: CertificateAuthority & { certPem: string; keyPem: string };
const inAMinute = new Date(NOW.getTime() + 60_000);

beforeAll(() => {
  ca = rootCa();
});

function verifyError(run: () => unknown): X509Error {
  try {
    run();
  } catch (e) {
    expect(e).toBeInstanceOf(X509Error);
    return e as X509Error;
  }
  throw new Error("verification unexpectedly succeeded");
}

describe("verifySvid", () => {
  it("returns the SPIFFE ID, serial, validity and delegation of a valid SVID", () => {
    const { minted, keys } = mintSample(ca);
    const v = verifySvid({ certDer: minted.der, bundle: ca.bundleDer, now: inAMinute });
    expect(v.spiffeId).toBe(SPIFFE_ID);
    expect(v.trustDomain).toBe("custody.local");
    expect(v.serialHex).toBe(minted.serialHex);
    expect(v.notBefore).toEqual(NOW);
    expect(v.notAfter).toEqual(new Date(NOW.getTime() + HOUR));
    expect(v.publicKeySpki).toEqual(keys.publicKeySpki);
    expect(v.delegation).toEqual(sampleDelegation());
    expect(v.chain).toEqual([ca.certDer]);
  });

  it("accepts the bounds of the validity window and rejects one second outside", () => {
    const { minted } = mintSample(ca);
    const at = (ms: number) => () =>
      verifySvid({ certDer: minted.der, bundle: ca.bundleDer, now: new Date(ms) });
    expect(at(NOW.getTime())).not.toThrow();
    expect(at(NOW.getTime() + HOUR)).not.toThrow();
    expect(verifyError(at(NOW.getTime() - 1000)).message).toMatch(/not valid before/);
    expect(verifyError(at(NOW.getTime() + HOUR + 1000)).message).toMatch(/expired/);
  });

  it("rejects an SVID from another CA with the same subject name", () => {
    const { minted } = mintSample(rootCa());
    const err = verifyError(() => verifySvid({ certDer: minted.der, bundle: ca.bundleDer, now: inAMinute }));
    expect(err.field).toBe("certDer");
    expect(err.message).toMatch(/does not chain/);
  });

  it("rejects a certificate whose signed bytes were altered", () => {
    const { minted } = mintSample(ca);
    const der = minted.der.slice();
    const at = Buffer.from(der).indexOf(Buffer.from("review-42"));
    der[at] = "R".charCodeAt(0);
    const err = verifyError(() => verifySvid({ certDer: der, bundle: ca.bundleDer, now: inAMinute }));
    expect(err.message).toMatch(/does not chain/);
  });

  it("rejects a CA certificate presented as a leaf", () => {
    const err = verifyError(() => verifySvid({ certDer: ca.certDer, bundle: ca.bundleDer, now: inAMinute }));
    expect(err.field).toBe("certDer.basicConstraints");
  });

  it("rejects garbage and an empty bundle with named fields", () => {
    const { minted } = mintSample(ca);
    expect(
      verifyError(() => verifySvid({ certDer: new Uint8Array([1, 2]), bundle: ca.bundleDer, now: NOW }))
        .field,
    ).toMatch(/^certDer/);
    expect(verifyError(() => verifySvid({ certDer: minted.der, bundle: [], now: NOW })).field).toBe("bundle");
  });

  it("chains through a user-supplied intermediate only when the intermediate is provided", () => {
    const chain = opensslChain("ec");
    const inter = loadCa({
      certPem: chain.intermediatePem,
      keyPem: chain.intermediateKeyPem,
      chainPem: chain.rootPem,
    });
    const now = new Date();
    const { minted } = mintSample(inter, { notBefore: now, notAfter: new Date(now.getTime() + HOUR) });
    const root = certificatesFromPem(chain.rootPem);
    const ok = verifySvid({ certDer: minted.der, bundle: root, intermediates: inter.intermediatesDer, now });
    expect(ok.chain).toEqual([inter.certDer, root[0]]);
    expect(verifyError(() => verifySvid({ certDer: minted.der, bundle: root, now })).message).toMatch(
      /does not chain/,
    );
  });

  describe("leaves made by openssl with our CA (rules beyond what mintSvid can produce)", () => {
    // openssl dates these from the real clock, which must fall inside the CA's validity.
    let clockCa: typeof ca;
    beforeAll(() => {
      clockCa = rootCa(new Date());
    });
    const realNow = () => new Date();

    function opensslLeaf(extensions: string[]): Uint8Array {
      const dir = tempDir();
      writeFileSync(join(dir, "ca.pem"), clockCa.certPem);
      writeFileSync(join(dir, "ca.key"), clockCa.keyPem);
      writeFileSync(
        join(dir, "ext.cnf"),
        ["[req]", "distinguished_name=dn", "[dn]", "[leaf]", ...extensions, ""].join("\n"),
      );
      openssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "leaf.key"], dir);
      openssl(
        ["req", "-new", "-config", "ext.cnf", "-key", "leaf.key", "-subj", "/O=Other", "-out", "leaf.csr"],
        dir,
      );
      openssl(
        [
          "x509",
          "-req",
          "-in",
          "leaf.csr",
          "-CA",
          "ca.pem",
          "-CAkey",
          "ca.key",
          "-set_serial",
          "7",
          "-days",
          "1",
          "-extfile",
          "ext.cnf",
          "-extensions",
          "leaf",
          "-outform",
          "DER",
          "-out",
          "leaf.der",
        ],
        dir,
      );
      return new Uint8Array(readFileSync(join(dir, "leaf.der")));
    }

    it("rejects two URI SANs", () => {
      const der = opensslLeaf([
        "keyUsage=critical,digitalSignature",
        "subjectAltName=URI:spiffe://custody.local/a,URI:spiffe://custody.local/b",
      ]);
      const err = verifyError(() => verifySvid({ certDer: der, bundle: clockCa.bundleDer, now: realNow() }));
      expect(err.field).toBe("certDer.subjectAltName");
      expect(err.message).toMatch(/exactly one URI \(found 2\)/);
    });

    it("rejects a leaf with keyCertSign", () => {
      const der = opensslLeaf([
        "keyUsage=critical,digitalSignature,keyCertSign",
        "subjectAltName=URI:spiffe://custody.local/a",
      ]);
      expect(
        verifyError(() => verifySvid({ certDer: der, bundle: clockCa.bundleDer, now: realNow() })).message,
      ).toMatch(/keyCertSign/);
    });

    it("rejects a leaf without keyUsage", () => {
      const der = opensslLeaf(["subjectAltName=URI:spiffe://custody.local/a"]);
      expect(
        verifyError(() => verifySvid({ certDer: der, bundle: clockCa.bundleDer, now: realNow() })).field,
      ).toBe("certDer.keyUsage");
    });

    it("rejects an otherwise valid SVID that lacks the delegation extension", () => {
      const der = opensslLeaf([
        "keyUsage=critical,digitalSignature",
        "subjectAltName=URI:spiffe://custody.local/a",
      ]);
      expect(
        verifyError(() => verifySvid({ certDer: der, bundle: clockCa.bundleDer, now: realNow() })).field,
      ).toBe("certDer.delegation");
    });
  });
});
