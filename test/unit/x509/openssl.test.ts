import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { loadCa } from "../../../core/x509/ca.ts";
import { encodeDelegationExtension } from "../../../core/x509/delegation-extension.ts";
import {
  HOUR,
  mintSample,
  NOW,
  OPENSSL,
  openssl,
  opensslChain,
  rootCa,
  sampleDelegation,
  tempDir,
} from "./fixtures.ts";

/** Runs `openssl verify -x509_strict` and returns its exit status and output. */
function strictVerify(dir: string, args: string[]): { status: number | null; out: string } {
  const r = spawnSync(OPENSSL, ["verify", "-x509_strict", ...args], { cwd: dir, encoding: "utf8" });
  return { status: r.status, out: r.stdout + r.stderr };
}

const epoch = (d: Date) => String(Math.floor(d.getTime() / 1000));

describe("openssl verify -x509_strict", () => {
  it("accepts a generated root and an SVID it minted", () => {
    const ca = rootCa();
    const { minted } = mintSample(ca);
    const dir = tempDir();
    writeFileSync(join(dir, "ca.pem"), ca.certPem);
    writeFileSync(join(dir, "leaf.pem"), minted.pem);
    const at = epoch(new Date(NOW.getTime() + 60_000));
    expect(strictVerify(dir, ["-attime", at, "-CAfile", "ca.pem", "ca.pem"])).toEqual({
      status: 0,
      out: "ca.pem: OK\n",
    });
    expect(
      strictVerify(dir, ["-attime", at, "-purpose", "sslclient", "-CAfile", "ca.pem", "leaf.pem"]),
    ).toEqual({
      status: 0,
      out: "leaf.pem: OK\n",
    });
    expect(
      strictVerify(dir, ["-attime", at, "-purpose", "sslserver", "-CAfile", "ca.pem", "leaf.pem"]).status,
    ).toBe(0);
  });

  it("rejects the SVID against another CA and after it expires", () => {
    const { minted } = mintSample(rootCa());
    const dir = tempDir();
    writeFileSync(join(dir, "other.pem"), rootCa().certPem);
    writeFileSync(join(dir, "leaf.pem"), minted.pem);
    const wrong = strictVerify(dir, ["-attime", epoch(NOW), "-CAfile", "other.pem", "leaf.pem"]);
    expect(wrong.status).not.toBe(0);
    expect(wrong.out).toMatch(/unable to get local issuer certificate/);
  });

  it("accepts an SVID minted by a user-supplied intermediate, chained to the root", () => {
    const chain = opensslChain("rsa");
    const ca = loadCa({
      certPem: chain.intermediatePem,
      keyPem: chain.intermediateKeyPem,
      chainPem: chain.rootPem,
    });
    const now = new Date();
    const { minted } = mintSample(ca, { notBefore: now, notAfter: new Date(now.getTime() + HOUR) });
    const dir = tempDir();
    writeFileSync(join(dir, "root.pem"), chain.rootPem);
    writeFileSync(join(dir, "svid.pem"), minted.chainPem);
    writeFileSync(join(dir, "leaf.pem"), minted.pem);
    expect(strictVerify(dir, ["-CAfile", "root.pem", "-untrusted", "svid.pem", "leaf.pem"])).toEqual({
      status: 0,
      out: "leaf.pem: OK\n",
    });
    // Without the intermediate the chain is incomplete.
    expect(strictVerify(dir, ["-CAfile", "root.pem", "leaf.pem"]).status).not.toBe(0);
  });

  it("decodes the delegation extension with asn1parse as documented", () => {
    const dir = tempDir();
    writeFileSync(join(dir, "ext.der"), encodeDelegationExtension(sampleDelegation()));
    const out = openssl(["asn1parse", "-inform", "DER", "-in", "ext.der"], dir);
    expect(out).toMatch(/INTEGER\s+:01/);
    expect(out).toMatch(/UTF8STRING\s+:5f0c7a52-3d4e-4b8e-9a51-0c1f9a3e7d21/);
    expect(out).toMatch(/UTF8STRING\s+:alice@example.com/);
    expect(out).toMatch(/UTF8STRING\s+:read:repos\/acme\/\*/);
    expect(out).toMatch(/OCTET STRING\s+\[HEX DUMP\]:ABABAB/);
    expect(out).toMatch(/INTEGER\s+:02/);
    expect(out).toMatch(/UTF8STRING\s+:policy-7/);
  });
});
