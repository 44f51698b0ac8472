import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type CertificateAuthority, generateCa } from "../../../core/x509/ca.ts";
import type { DelegationInfo } from "../../../core/x509/delegation-extension.ts";
import { generateLeafKeyPair, type MintInput, mintSvid } from "../../../core/x509/mint.ts";
import { serialFromRandom } from "../../../core/x509/serial.ts";

export const OPENSSL = "/usr/bin/openssl";
export const TRUST_DOMAIN = "custody.local";
export const SPIFFE_ID = "spiffe://custody.local/ns/team-a/agent/reviewer/task/review-42";
export const NOW = new Date("2026-03-01T12:00:00.000Z");
export const HOUR = 3_600_000;

export function sampleDelegation(overrides: Partial<DelegationInfo> = {}): DelegationInfo {
  return {
    taskUid: "5f0c7a52-3d4e-4b8e-9a51-0c1f9a3e7d21",
    delegator: { kind: "user", name: "alice@example.com", uid: "u-1234" },
    scope: ["read:repos/acme/*", "write:repos/acme/docs"],
    chainDigest: new Uint8Array(32).fill(0xab),
    chainDepth: 2,
    policyVersion: "policy-7",
    specDigest: new Uint8Array(32).fill(0xcd),
    ...overrides,
  };
}

export function rootCa(now = NOW): CertificateAuthority & { certPem: string; keyPem: string } {
  const g = generateCa({
    trustDomain: TRUST_DOMAIN,
    now,
    validityMs: 30 * 24 * HOUR,
    serial: serialFromRandom(randomBytes(16)),
  });
  return { ...g.ca, keyPem: g.keyPem };
}

export function mintSample(ca: CertificateAuthority, overrides: Partial<MintInput> = {}) {
  const keys = generateLeafKeyPair();
  const minted = mintSvid({
    ca,
    spiffeId: SPIFFE_ID,
    subjectPublicKey: keys.publicKeySpki,
    serial: serialFromRandom(randomBytes(16)),
    notBefore: NOW,
    notAfter: new Date(NOW.getTime() + HOUR),
    delegation: sampleDelegation(),
    ...overrides,
  });
  return { keys, minted };
}

export function tempDir(): string {
  return mkdtempSync(join(tmpdir(), "custody-x509-"));
}

export function openssl(args: string[], cwd: string): string {
  return execFileSync(OPENSSL, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

export interface ForeignChain {
  readonly rootPem: string;
  readonly rootKeyPem: string;
  readonly intermediatePem: string;
  readonly intermediateKeyPem: string;
}

/**
 * A user-supplied hierarchy made by openssl, not by our code: an RSA or EC
 * root and an EC P-256 intermediate with pathlen 0. openssl dates them from
 * the real clock, so tests using them take "now" from the clock too.
 */
export function opensslChain(rootKey: "rsa" | "ec"): ForeignChain {
  const dir = tempDir();
  const keyArgs =
    rootKey === "rsa" ? ["-newkey", "rsa:2048"] : ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
  writeFileSync(
    join(dir, "ext.cnf"),
    [
      "[req]",
      "distinguished_name=dn",
      "[dn]",
      "[root]",
      "basicConstraints=critical,CA:TRUE",
      "keyUsage=critical,keyCertSign,cRLSign",
      "subjectKeyIdentifier=hash",
      "[inter]",
      "basicConstraints=critical,CA:TRUE,pathlen:0",
      "keyUsage=critical,keyCertSign,cRLSign",
      "subjectKeyIdentifier=hash",
      "authorityKeyIdentifier=keyid:always",
      "subjectAltName=URI:spiffe://custody.local",
      "",
    ].join("\n"),
  );
  openssl(
    [
      "req",
      "-x509",
      ...keyArgs,
      "-nodes",
      "-keyout",
      "root.key",
      "-out",
      "root.pem",
      "-subj",
      "/O=Acme/CN=Acme Root",
      "-days",
      "3650",
      "-config",
      "ext.cnf",
      "-extensions",
      "root",
      "-set_serial",
      "1",
    ],
    dir,
  );
  openssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "inter.sec1"], dir);
  openssl(
    [
      "req",
      "-new",
      "-config",
      "ext.cnf",
      "-key",
      "inter.sec1",
      "-subj",
      "/O=Acme/CN=Acme Custody Intermediate",
      "-out",
      "inter.csr",
    ],
    dir,
  );
  openssl(
    [
      "x509",
      "-req",
      "-in",
      "inter.csr",
      "-CA",
      "root.pem",
      "-CAkey",
      "root.key",
      "-set_serial",
      "2",
      "-days",
      "3000",
      "-extfile",
      "ext.cnf",
      "-extensions",
      "inter",
      "-out",
      "inter.pem",
    ],
    dir,
  );
  return {
    rootPem: readFileSync(join(dir, "root.pem"), "utf8"),
    rootKeyPem: readFileSync(join(dir, "root.key"), "utf8"),
    intermediatePem: readFileSync(join(dir, "inter.pem"), "utf8"),
    // SEC1 ("EC PRIVATE KEY") on purpose: loadCa must accept what users have.
    intermediateKeyPem: readFileSync(join(dir, "inter.sec1"), "utf8"),
  };
}
