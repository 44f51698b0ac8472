import { createPrivateKey, generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import { encodeP256PrivateKey, isOnCurve, SPKI_PREFIX, spkiOfP256 } from "../../../core/x509/p256.ts";

describe("P-256 templates", () => {
  it("encode PKCS#8 and SPKI byte-identical to node:crypto's exporters", () => {
    for (let i = 0; i < 20; i++) {
      const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
      const { pkcs8, spki } = encodeP256PrivateKey(privateKey);
      expect(pkcs8).toEqual(new Uint8Array(privateKey.export({ type: "pkcs8", format: "der" })));
      expect(spki).toEqual(new Uint8Array(publicKey.export({ type: "spki", format: "der" })));
      expect(spkiOfP256(publicKey)).toEqual(spki);
      // And the PKCS#8 reloads as the same key.
      const reloaded = createPrivateKey({ key: Buffer.from(pkcs8), format: "der", type: "pkcs8" });
      expect(reloaded.export({ format: "jwk" })).toEqual(privateKey.export({ format: "jwk" }));
    }
  });

  it("isOnCurve accepts real points and rejects altered ones", () => {
    const { spki } = encodeP256PrivateKey(generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey);
    const point = spki.subarray(SPKI_PREFIX.length);
    expect(isOnCurve(point)).toBe(true);
    for (const index of [1, 20, 33, 64]) {
      const bad = point.slice();
      bad[index] = bad[index]! ^ 0x01;
      expect(isOnCurve(bad)).toBe(false);
    }
    const compressedTag = point.slice();
    compressedTag[0] = 0x02;
    expect(isOnCurve(compressedTag)).toBe(false);
    // Coordinates >= p are rejected even if they would reduce onto the curve.
    const big = new Uint8Array(65).fill(0xff);
    big[0] = 0x04;
    expect(isOnCurve(big)).toBe(false);
  });
});
