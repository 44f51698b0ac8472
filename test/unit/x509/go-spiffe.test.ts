import { spawnSync } from "node:child_process";
import { existsSync, statSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { join, resolve } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { loadCa } from "../../../core/x509/ca.ts";
import { encodeDelegationExtension } from "../../../core/x509/delegation-extension.ts";
import {
  HOUR,
  mintSample,
  NOW,
  opensslChain,
  rootCa,
  SPIFFE_ID,
  sampleDelegation,
  tempDir,
} from "./fixtures.ts";

/**
 * Conformance with go-spiffe v2: the SVIDs must load with x509svid.Load and
 * verify with x509svid.Verify against an x509bundle, unchanged. The checker
 * (test/conformance/go-spiffe) is built in beforeAll when missing or stale,
 * so this test always runs for real.
 */
const SOURCE_DIR = resolve(import.meta.dirname, "../../conformance/go-spiffe");
const CHECKER = process.env.CUSTODY_GO_SPIFFE_CHECK ?? join(homedir(), ".cache/custody/go-spiffe-check");

function stale(): boolean {
  if (!existsSync(CHECKER)) return true;
  const built = statSync(CHECKER).mtimeMs;
  return ["main.go", "go.mod", "go.sum"].some((f) => statSync(join(SOURCE_DIR, f)).mtimeMs > built);
}

interface CheckResult {
  readonly status: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function check(files: { cert: string; key: string; bundle: string }, at: Date): CheckResult {
  const dir = tempDir();
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, `${name}.pem`), text);
  const r = spawnSync(
    CHECKER,
    [
      "-cert",
      "cert.pem",
      "-key",
      "key.pem",
      "-bundle",
      "bundle.pem",
      "-trust-domain",
      "custody.local",
      "-time",
      at.toISOString(),
    ],
    { cwd: dir, encoding: "utf8" },
  );
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

beforeAll(() => {
  if (!stale()) return;
  const r = spawnSync("bash", [join(SOURCE_DIR, "build.sh")], {
    encoding: "utf8",
    env: { ...process.env, CUSTODY_GO_SPIFFE_CHECK: CHECKER },
  });
  if (r.status !== 0) throw new Error(`building the go-spiffe checker failed:\n${r.stderr}`);
}, 300_000);

describe("go-spiffe x509svid conformance", () => {
  it("loads and verifies an SVID from a generated root, delegation extension intact", () => {
    const ca = rootCa();
    const { minted, keys } = mintSample(ca);
    const r = check(
      { cert: minted.chainPem, key: keys.privateKeyPem, bundle: ca.bundlePem },
      new Date(NOW.getTime() + 60_000),
    );
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({
      spiffeId: SPIFFE_ID,
      chains: 1,
      chainLength: 2,
      delegationExtension: Buffer.from(encodeDelegationExtension(sampleDelegation())).toString("hex"),
    });
  });

  it("verifies an SVID minted by a user-supplied intermediate (svid file = leaf + intermediate)", () => {
    const chain = opensslChain("ec");
    const ca = loadCa({
      certPem: chain.intermediatePem,
      keyPem: chain.intermediateKeyPem,
      chainPem: chain.rootPem,
    });
    const now = new Date();
    const { minted, keys } = mintSample(ca, { notBefore: now, notAfter: new Date(now.getTime() + HOUR) });
    const r = check(
      { cert: minted.chainPem, key: keys.privateKeyPem, bundle: ca.bundlePem },
      new Date(now.getTime() + 1000),
    );
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ spiffeId: SPIFFE_ID, chainLength: 3 });
  });

  it("fails against a foreign bundle, outside the validity window and with a mismatched key", () => {
    const ca = rootCa();
    const { minted, keys } = mintSample(ca);
    const at = new Date(NOW.getTime() + 60_000);
    const foreign = check({ cert: minted.pem, key: keys.privateKeyPem, bundle: rootCa().certPem }, at);
    expect(foreign.status).toBe(1);
    expect(foreign.stderr).toMatch(/could not verify leaf certificate/);
    const late = check(
      { cert: minted.pem, key: keys.privateKeyPem, bundle: ca.certPem },
      new Date(NOW.getTime() + 2 * HOUR),
    );
    expect(late.status).toBe(1);
    expect(late.stderr).toMatch(/expired|not yet valid/);
    const otherKey = mintSample(ca).keys.privateKeyPem;
    const mismatch = check({ cert: minted.pem, key: otherKey, bundle: ca.certPem }, at);
    expect(mismatch.status).toBe(1);
    expect(mismatch.stderr).toMatch(/load: .*private key/);
  });
});
