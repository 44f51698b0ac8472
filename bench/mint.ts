/**
 * Mint throughput on one core: `node bench/mint.ts [seconds-per-case]`.
 * Prints certificates/s for mintSvid with and without leaf key generation,
 * beside the raw node:crypto P-256 sign and keygen rates that bound them.
 */
import { generateKeyPairSync, randomBytes, sign } from "node:crypto";
import { generateCa } from "../core/x509/ca.ts";
import type { DelegationInfo } from "../core/x509/delegation-extension.ts";
import { generateLeafKeyPair, mintSvid } from "../core/x509/mint.ts";
import { serialFromRandom } from "../core/x509/serial.ts";

const seconds = Number(process.argv[2] ?? 2);
const now = new Date();
const { ca } = generateCa({
  trustDomain: "custody.local",
  now,
  validityMs: 86_400_000,
  serial: serialFromRandom(randomBytes(16)),
});
const delegation: DelegationInfo = {
  taskUid: "5f0c7a52-3d4e-4b8e-9a51-0c1f9a3e7d21",
  delegator: { kind: "user", name: "alice@example.com", uid: "u-1234" },
  scope: ["read:repos/acme/*", "write:repos/acme/docs", "call:tools/search"],
  chainDigest: randomBytes(32),
  chainDepth: 1,
  policyVersion: "policy-7",
  specDigest: randomBytes(32),
};
const notAfter = new Date(now.getTime() + 3_600_000);
const spiffeId = "spiffe://custody.local/ns/team-a/agent/reviewer/task/review-42";

function rate(name: string, op: (i: number) => void): number {
  for (let i = 0; i < 200; i++) op(i); // warm-up
  let n = 0;
  const start = process.hrtime.bigint();
  const budget = BigInt(Math.round(seconds * 1e9));
  let elapsed = 0n;
  while (elapsed < budget) {
    for (let i = 0; i < 100; i++) op(n++);
    elapsed = process.hrtime.bigint() - start;
  }
  const perSecond = n / (Number(elapsed) / 1e9);
  console.log(`${name.padEnd(52)} ${Math.round(perSecond).toLocaleString("en-US").padStart(9)} /s`);
  return perSecond;
}

const tbs = randomBytes(420); // about the size of an SVID's TBSCertificate
const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
const spkis = Array.from({ length: 1024 }, () => generateLeafKeyPair().publicKeySpki);
const serials = Array.from({ length: 1024 }, () => serialFromRandom(randomBytes(16)));

console.log(`node ${process.version}, one process, ${seconds}s per case`);
rate("raw P-256 sign, sign(h, data, keyObject)", () => sign("sha256", tbs, privateKey));
rate("raw P-256 sign, sign(h, data, { key, dsaEncoding })", () =>
  sign("sha256", tbs, { key: privateKey, dsaEncoding: "der" }),
);
rate("raw P-256 keygen (KeyObjects only)", () => generateKeyPairSync("ec", { namedCurve: "P-256" }));
rate("generateLeafKeyPair (+ SPKI DER, PKCS#8 PEM)", () => generateLeafKeyPair());
const mintArgs = (i: number, subjectPublicKey: Uint8Array) => ({
  ca,
  spiffeId,
  subjectPublicKey,
  serial: serials[i & 1023]!,
  notBefore: now,
  notAfter,
  delegation,
});
rate("mintSvid (key supplied)", (i) => mintSvid(mintArgs(i, spkis[i & 1023]!)));
rate("generateLeafKeyPair + mintSvid", (i) => mintSvid(mintArgs(i, generateLeafKeyPair().publicKeySpki)));
