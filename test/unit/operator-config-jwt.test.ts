// The JWT and identity-endpoint settings: defaults, and bad values refused at
// start with the variable named.
import { describe, expect, it } from "vitest";
import { loadOperatorConfig } from "../../operator/config.ts";

const base = { CUSTODY_KAFKA_BROKERS: "127.0.0.1:9092" };
const refusal = (env: Record<string, string>): string => {
  try {
    loadOperatorConfig({ ...base, ...env });
  } catch (err) {
    return (err as Error).message;
  }
  throw new Error("expected the configuration to be refused");
};

describe("operator configuration: JWT-SVIDs and the identity endpoint", () => {
  it("defaults: ES256, 5-minute tokens, daily rotation published 30 minutes ahead, issuer from the address", () => {
    const c = loadOperatorConfig(base);
    expect(c.jwt.alg).toBe("ES256");
    expect(c.jwt.ttlMs).toBe(300_000);
    expect(c.jwt.schedule).toEqual({
      rotationPeriodMs: 86_400_000,
      publishAheadMs: 1_800_000,
      retentionMs: 360_000,
    });
    // Relying parties refresh at least twice while a new key waits to sign.
    expect(c.jwt.jwksMaxAgeSeconds).toBeLessThanOrEqual(1800 / 2);
    expect(c.oidc.issuer).toBe("https://127.0.0.1:8444");
    expect(c.oidc.addr).toEqual({ host: "127.0.0.1", port: 8444 });
  });

  it("keeps a retired key for the longest token lifetime plus a minute", () => {
    const c = loadOperatorConfig({ ...base, CUSTODY_JWT_SVID_TTL_SECONDS: "900" });
    expect(c.jwt.schedule.retentionMs).toBe(960_000);
  });

  it("takes an explicit issuer, without its trailing slash", () => {
    const c = loadOperatorConfig({ ...base, CUSTODY_OIDC_ISSUER: "https://id.example.com/custody/" });
    expect(c.oidc.issuer).toBe("https://id.example.com/custody");
  });

  it.each([
    [
      { CUSTODY_OIDC_ADDR: "127.0.0.1:0" },
      /CUSTODY_OIDC_ISSUER: is required when CUSTODY_OIDC_ADDR picks a free port/,
    ],
    [{ CUSTODY_OIDC_ISSUER: "http://id.example.com" }, /CUSTODY_OIDC_ISSUER: must be an https:\/\/ URL/],
    [
      { CUSTODY_OIDC_ISSUER: "https://id.example.com/?x=1" },
      /CUSTODY_OIDC_ISSUER: must have no query or fragment/,
    ],
    [{ CUSTODY_JWT_ALG: "HS256" }, /CUSTODY_JWT_ALG/],
    [{ CUSTODY_JWT_SVID_TTL_SECONDS: "10" }, /CUSTODY_JWT_SVID_TTL_SECONDS/],
    [
      { CUSTODY_JWT_KEY_ROTATION_SECONDS: "60", CUSTODY_JWT_KEY_PUBLISH_AHEAD_SECONDS: "60" },
      /CUSTODY_JWT_KEY_ROTATION_SECONDS: must be longer than the publish-ahead time/,
    ],
    [
      {
        CUSTODY_JWT_KEY_ROTATION_SECONDS: "10",
        CUSTODY_JWT_KEY_PUBLISH_AHEAD_SECONDS: "2",
        CUSTODY_JWT_SVID_TTL_SECONDS: "3600",
      },
      /CUSTODY_JWT_KEY_ROTATION_SECONDS: must be at least \d+ s: .* up to \d+ keys/,
    ],
  ])("refuses %j naming the variable", (env, message) => {
    expect(refusal(env)).toMatch(message);
  });
});
