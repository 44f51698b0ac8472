import { generateKeyPairSync, type KeyObject } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ValidationError } from "../../core/errors.ts";
import {
  checkKeyFitsAlg,
  checkSchedule,
  type JwtKey,
  type KeyRingState,
  type KeySchedule,
  parseRing,
  planRotation,
  publicJwk,
  publishedKeys,
  publishedSince,
  serializeRing,
  signingKey,
} from "../../core/jwt/keys.ts";
import { generateJwtKey } from "../../operator/jwt-keys.ts";

const T0 = Date.parse("2026-03-01T12:00:00.000Z");

/** A key without material: the ring logic only reads kid and dates. */
function fakeKeys() {
  let n = 0;
  const made: JwtKey[] = [];
  const generate = (createdAt: number, activateAt: number): JwtKey => {
    const k = {
      kid: `k${n++}`,
      alg: "ES256",
      privateKey: {} as KeyObject,
      publicKey: {} as KeyObject,
      createdAt,
      activateAt,
    } satisfies JwtKey;
    made.push(k);
    return k;
  };
  return { generate, made };
}

const kids = (keys: readonly JwtKey[]) => keys.map((k) => k.kid);

function validationError(run: () => unknown): ValidationError {
  try {
    run();
  } catch (e) {
    if (e instanceof ValidationError) return e;
    throw e;
  }
  throw new Error("expected a ValidationError");
}

// period 100 s, published 10 s ahead, retired keys kept 20 s.
const S: KeySchedule = { rotationPeriodMs: 100_000, publishAheadMs: 10_000, retentionMs: 20_000 };
const sec = (s: number) => T0 + s * 1000;

describe("planRotation and the key timeline", () => {
  it("creates a first key that signs at once", () => {
    const { generate, made } = fakeKeys();
    const plan = planRotation([], T0, S, generate);
    expect(made).toHaveLength(1);
    expect(plan.ring).toEqual([made[0]]);
    expect(made[0]).toMatchObject({ createdAt: T0, activateAt: T0 });
    expect(signingKey(plan.ring, T0)?.kid).toBe(made[0]!.kid);
    expect(kids(publishedKeys(plan.ring, T0, S))).toEqual([made[0]!.kid]);
    expect(plan.changes).toHaveLength(1);
    expect(plan.changes[0]).toContain(made[0]!.kid);
  });

  it("has no signing key before anything was created or activated", () => {
    expect(signingKey([], T0)).toBeUndefined();
    const { generate } = fakeKeys();
    const pending = generate(T0, T0 + 5);
    expect(signingKey([pending], T0)).toBeUndefined();
    expect(signingKey([pending], T0 + 5)?.kid).toBe(pending.kid);
  });

  it("publishes the next key publishAhead before the period ends and switches only at activateAt", () => {
    const { generate, made } = fakeKeys();
    let ring = planRotation([], sec(0), S, generate).ring;
    const first = made[0]!;

    // One millisecond before publish time: nothing changes, the same array comes back.
    const early = planRotation(ring, sec(90) - 1, S, generate);
    expect(early.ring).toBe(ring);
    expect(early.changes).toEqual([]);
    expect(made).toHaveLength(1);

    const plan = planRotation(ring, sec(90), S, generate);
    ring = plan.ring;
    expect(made).toHaveLength(2);
    const next = made[1]!;
    expect(next).toMatchObject({ createdAt: sec(90), activateAt: sec(100) });
    expect(plan.changes).toHaveLength(1);
    expect(plan.changes[0]).toContain(next.kid);

    // Published at once, signing only from activateAt.
    expect(kids(publishedKeys(ring, sec(90), S))).toEqual([first.kid, next.kid]);
    expect(signingKey(ring, sec(90))?.kid).toBe(first.kid);
    expect(signingKey(ring, sec(100) - 1)?.kid).toBe(first.kid);
    expect(signingKey(ring, sec(100))?.kid).toBe(next.kid);
    // Not published before it was created.
    expect(kids(publishedKeys(ring, sec(90) - 1, S))).toEqual([first.kid]);

    // While the next key waits, no further key is created.
    const waiting = planRotation(ring, sec(95), S, generate);
    expect(waiting.ring).toBe(ring);
    expect(made).toHaveLength(2);
  });

  it("a late planner still publishes the next key a full publishAhead before it signs", () => {
    const { generate, made } = fakeKeys();
    const ring = planRotation([], sec(0), S, generate).ring;
    // The leader was away: first plans again 5 s after the publish time, then 50 s after the period ended.
    const late = planRotation(ring, sec(95), S, generate).ring;
    expect(made[1]).toMatchObject({ createdAt: sec(95), activateAt: sec(105) });
    expect(signingKey(late, sec(104))?.kid).toBe(made[0]!.kid);

    const veryLate = planRotation(ring, sec(150), S, generate).ring;
    expect(made[2]).toMatchObject({ createdAt: sec(150), activateAt: sec(160) });
    expect(signingKey(veryLate, sec(159))?.kid).toBe(made[0]!.kid);
    expect(signingKey(veryLate, sec(160))?.kid).toBe(made[2]!.kid);
  });

  it("keeps a retired key published until successor.activateAt + retention, then drops it", () => {
    const { generate, made } = fakeKeys();
    let ring = planRotation([], sec(0), S, generate).ring;
    ring = planRotation(ring, sec(90), S, generate).ring;
    const [first, next] = [made[0]!, made[1]!];

    // Retired at 100 s, still published (and kept in the ring) until 120 s.
    expect(kids(publishedKeys(ring, sec(119) - 0, S))).toContain(first.kid);
    expect(kids(publishedKeys(ring, sec(120) - 1, S))).toContain(first.kid);
    const kept = planRotation(ring, sec(120) - 1, S, generate);
    expect(kept.ring).toBe(ring);
    expect(kept.changes).toEqual([]);

    expect(kids(publishedKeys(ring, sec(120), S))).toEqual([next.kid]);
    const dropped = planRotation(ring, sec(120), S, generate);
    expect(kids(dropped.ring)).toEqual([next.kid]);
    expect(dropped.changes).toHaveLength(1);
    expect(dropped.changes[0]).toContain(`removed key ${first.kid}`);
    // The input is not mutated.
    expect(kids(ring)).toEqual([first.kid, next.kid]);
  });

  it("returns the very same array when nothing changes", () => {
    const { generate } = fakeKeys();
    const ring = planRotation([], sec(0), S, generate).ring;
    for (const t of [sec(0), sec(1), sec(50), sec(90) - 1]) {
      const plan = planRotation(ring, t, S, generate);
      expect(plan.ring).toBe(ring);
      expect(plan.changes).toEqual([]);
    }
    expect(planRotation(ring, sec(90), S, generate).ring).not.toBe(ring);
  });

  it("orders an unsorted ring and picks the latest activated key", () => {
    const { generate } = fakeKeys();
    const a = generate(sec(0), sec(0));
    const b = generate(sec(90), sec(100));
    const c = generate(sec(190), sec(200));
    const ring: KeyRingState = [c, a, b];
    expect(signingKey(ring, sec(150))?.kid).toBe(b.kid);
    expect(signingKey(ring, sec(200))?.kid).toBe(c.kid);
    expect(kids(publishedKeys(ring, sec(110), S))).toEqual([a.kid, b.kid]);
    expect(kids(publishedKeys(ring, sec(190), S))).toEqual([b.kid, c.kid]);
  });
});

describe("publishedSince", () => {
  it("is the time the newest published key was created", () => {
    const { generate } = fakeKeys();
    const a = generate(sec(0), sec(0));
    const b = generate(sec(90), sec(100));
    expect(publishedSince([a, b], sec(50), S)).toBe(sec(0));
    expect(publishedSince([a, b], sec(90) - 1, S)).toBe(sec(0));
    expect(publishedSince([a, b], sec(90), S)).toBe(sec(90));
    expect(publishedSince([a, b], sec(110), S)).toBe(sec(90));
  });

  it("advances when a retired key that is still in the ring drops out of the published set", () => {
    const { generate } = fakeKeys();
    const a = generate(sec(0), sec(0));
    const b = generate(sec(90), sec(100));
    expect(publishedSince([a, b], sec(120) - 1, S)).toBe(sec(90));
    expect(publishedSince([a, b], sec(120), S)).toBe(sec(120));
  });

  // The drop of a retired key must count even after planRotation pruned it
  // from the ring (what the leader writes and every replica loads): the
  // SPIFFE bundle's sequence must grow when the published set changes.
  it("increases when planRotation drops a retired key (spiffe_sequence must change)", () => {
    const { generate } = fakeKeys();
    let ring = planRotation([], sec(0), S, generate).ring;
    ring = planRotation(ring, sec(90), S, generate).ring;
    const before = publishedSince(ring, sec(120) - 1, S);
    const pruned = planRotation(ring, sec(120), S, generate).ring;
    expect(kids(publishedKeys(pruned, sec(120), S))).not.toEqual(kids(publishedKeys(ring, sec(120) - 1, S)));
    expect(publishedSince(pruned, sec(120), S)).toBeGreaterThan(before);
  });
});

describe("checkSchedule", () => {
  it("accepts a schedule whose keys are published before they sign", () => {
    expect(checkSchedule(S)).toBe(S);
  });

  it.each([
    [{ ...S, publishAheadMs: 0 }, "publishAhead", "positive"],
    [{ ...S, publishAheadMs: Number.NaN }, "publishAhead", "positive"],
    [{ ...S, rotationPeriodMs: S.publishAheadMs }, "rotationPeriod", "longer-than-publish-ahead"],
    [{ ...S, rotationPeriodMs: 1 }, "rotationPeriod", "longer-than-publish-ahead"],
    [{ ...S, retentionMs: 0 }, "retention", "positive"],
    [{ ...S, retentionMs: -5 }, "retention", "positive"],
  ])("refuses %o naming %s", (schedule, field, rule) => {
    const err = validationError(() => checkSchedule(schedule));
    expect(err.field).toBe(field);
    expect(err.rule).toBe(rule);
    expect(err.message).toContain(field);
  });
});

// ---------------------------------------------------------------- simulation

interface Token {
  kid: string;
  exp: number;
}

const scheduleArb = fc
  .record({
    publishAheadMs: fc.integer({ min: 1, max: 2_000 }),
    extraPeriod: fc.integer({ min: 1, max: 8_000 }),
    retentionMs: fc.integer({ min: 1, max: 6_000 }),
  })
  .map(
    ({ publishAheadMs, extraPeriod, retentionMs }): KeySchedule => ({
      publishAheadMs,
      rotationPeriodMs: publishAheadMs + extraPeriod,
      retentionMs,
    }),
  )
  // checkSchedule bounds the ring's size: retention at most ~50 periods.
  .filter((s) => Math.ceil(s.retentionMs / s.rotationPeriodMs) + 2 <= 56);

describe("key ring simulation (property)", () => {
  it("keeps one signing key, publishes keys ahead and until every token they signed expired", () => {
    fc.assert(
      fc.property(
        scheduleArb,
        fc.integer({ min: 0, max: 1_000 }),
        fc.array(
          fc.record({ dt: fc.integer({ min: 1, max: 4_000 }), ttl: fc.integer({ min: 0, max: 1_000 }) }),
          {
            minLength: 1,
            maxLength: 150,
          },
        ),
        fc.integer({ min: 0, max: 10 ** 9 }),
        (schedule, skewPermille, steps, start) => {
          checkSchedule(schedule);
          const skew = Math.floor(((schedule.retentionMs - 1) * skewPermille) / 1000);
          const { generate, made } = fakeKeys();
          const firstPublished = new Map<string, number>();
          const firstSigned = new Map<string, number>();
          const tokens: Token[] = [];
          let ring: KeyRingState = [];
          let t = T0 + start;

          for (const step of [{ dt: 0, ttl: 0 }, ...steps]) {
            t += step.dt;
            const before = made.length;
            const plan = planRotation(ring, t, schedule, generate);
            // Keys are created at the planning time, never ahead or behind.
            for (const k of made.slice(before)) expect(k.createdAt).toBe(t);
            if (plan.changes.length === 0) expect(plan.ring).toBe(ring);
            ring = plan.ring;
            // Planning again at the same time changes nothing.
            const again = planRotation(ring, t, schedule, generate);
            expect(again.ring).toBe(ring);
            expect(again.changes).toEqual([]);

            // Exactly one key is in its signing window, and it is signingKey's answer.
            const sorted = [...ring].sort((a, b) => a.activateAt - b.activateAt);
            const inWindow = sorted.filter(
              (k, i) => k.activateAt <= t && (sorted[i + 1] === undefined || sorted[i + 1]!.activateAt > t),
            );
            expect(inWindow).toHaveLength(1);
            expect(new Set(ring.map((k) => k.activateAt)).size).toBe(ring.length);
            const signer = signingKey(ring, t);
            expect(signer?.kid).toBe(inWindow[0]!.kid);

            const published = publishedKeys(ring, t, schedule);
            const publishedIds = new Set(kids(published));
            expect(publishedIds.has(signer!.kid)).toBe(true);
            // The ring holds nothing that is no longer published (planRotation prunes).
            for (const k of ring) if (k.createdAt <= t) expect(publishedIds.has(k.kid)).toBe(true);
            expect(publishedSince(ring, t, schedule)).toBeLessThanOrEqual(t);

            for (const k of published) if (!firstPublished.has(k.kid)) firstPublished.set(k.kid, t);
            if (!firstSigned.has(signer!.kid)) firstSigned.set(signer!.kid, t);

            // Every token signed so far verifies until it expired, even on a verifier `skew` behind.
            for (const tok of tokens) {
              if (tok.exp + skew > t) expect(publishedIds.has(tok.kid)).toBe(true);
            }
            // A token signed now lives at most retention - skew.
            const ttl = 1 + Math.floor(((schedule.retentionMs - skew - 1) * step.ttl) / 1000);
            tokens.push({ kid: signer!.kid, exp: t + ttl });
          }

          // Every key but the first was published at least publishAhead before it signs,
          // and was seen published at an earlier step than the one where it first signed.
          expect(made[0]!.createdAt).toBe(made[0]!.activateAt);
          for (const k of made.slice(1)) {
            expect(k.activateAt - k.createdAt).toBeGreaterThanOrEqual(schedule.publishAheadMs);
            const signedAt = firstSigned.get(k.kid);
            if (signedAt !== undefined) {
              expect(signedAt).toBeGreaterThanOrEqual(k.activateAt);
              expect(firstPublished.get(k.kid)!).toBeLessThan(signedAt);
            }
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});

// ---------------------------------------------------------------- storage

function storedKeys(text: string): Array<Record<string, unknown>> {
  return (JSON.parse(text) as { keys: Array<Record<string, unknown>> }).keys;
}

function withKeys(text: string, edit: (keys: Array<Record<string, unknown>>) => void): string {
  const doc = JSON.parse(text) as { keys: Array<Record<string, unknown>> };
  edit(doc.keys);
  return JSON.stringify(doc);
}

describe("serializeRing / parseRing", () => {
  const a = generateJwtKey("ES256", sec(0), sec(0));
  const b = generateJwtKey("ES256", sec(90), sec(100));
  const text = serializeRing([a, b]);
  const pems = storedKeys(text).map((k) => k.privateKeyPem as string);
  const pemBody = (pem: string) => pem.split("\n")[1]!;

  function expectNoKeyMaterial(err: ValidationError) {
    expect(err.message).not.toContain("PRIVATE KEY");
    for (const pem of pems) expect(err.message).not.toContain(pemBody(pem));
  }

  it("round-trips keys, dates and algorithms", () => {
    const back = parseRing(text);
    expect(back.map((k) => [k.kid, k.alg, k.createdAt, k.activateAt])).toEqual([
      [a.kid, "ES256", sec(0), sec(0)],
      [b.kid, "ES256", sec(90), sec(100)],
    ]);
    for (const [i, k] of back.entries()) {
      const orig = [a, b][i]!;
      expect(k.publicKey.equals(orig.publicKey)).toBe(true);
      expect(k.privateKey.equals(orig.privateKey)).toBe(true);
    }
    expect(serializeRing(back)).toBe(text);
  });

  it("stores private keys as PKCS#8 PEM and dates as ISO strings", () => {
    const stored = storedKeys(text);
    expect(stored[0]).toMatchObject({
      kid: a.kid,
      alg: "ES256",
      createdAt: "2026-03-01T12:00:00.000Z",
      activateAt: "2026-03-01T12:00:00.000Z",
    });
    expect(stored[0]!.privateKeyPem).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
  });

  it("refuses malformed JSON", () => {
    const err = validationError(() => parseRing(text.slice(0, -3)));
    expect(err.field).toBe("keys.json");
    expect(err.rule).toBe("json");
    expectNoKeyMaterial(err);
  });

  it("names the field it was given", () => {
    expect(validationError(() => parseRing("{", "secret/keys")).field).toBe("secret/keys");
  });

  it("refuses a kid that is not the key's thumbprint", () => {
    const swapped = withKeys(text, (keys) => {
      keys[1]!.kid = a.kid;
    });
    const err = validationError(() => parseRing(swapped));
    expect(err.field).toBe("keys.json.keys[1].kid");
    expect(err.rule).toBe("thumbprint");
    expectNoKeyMaterial(err);
  });

  it.each(["ES384", "RS256", "PS256"])("refuses a P-256 key stored as %s", (alg) => {
    const wrong = withKeys(text, (keys) => {
      keys[0]!.alg = alg;
    });
    const err = validationError(() => parseRing(wrong));
    expect(err.field).toBe("keys.json.keys[0].alg");
    expect(err.rule).toBe("key-type");
    expectNoKeyMaterial(err);
  });

  // The key's fit is checked before its thumbprint, so the error names the stored key's place.
  it("refuses a P-384 key stored as ES256 naming keys.json.keys[0].alg", () => {
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-384" });
    const pem = privateKey.export({ format: "pem", type: "pkcs8" }).toString();
    const wrong = withKeys(text, (keys) => {
      keys[0]!.privateKeyPem = pem;
    });
    const err = validationError(() => parseRing(wrong));
    expect(err.message).not.toContain(pemBody(pem));
    expect(err.field).toMatch(/^keys\.json\.keys\[0\]\./);
  });

  it("refuses a PEM that is not a private key, without echoing it", () => {
    const garbage =
      "-----BEGIN PRIVATE KEY-----\nTUlJQmFkS2V5TWF0ZXJpYWxTZWNyZXQ=\n-----END PRIVATE KEY-----\n";
    const err = validationError(() =>
      parseRing(
        withKeys(text, (keys) => {
          keys[1]!.privateKeyPem = garbage;
        }),
      ),
    );
    expect(err.field).toBe("keys.json.keys[1].privateKeyPem");
    expect(err.rule).toBe("pkcs8");
    expect(err.message).not.toContain("TUlJQmFkS2V5TWF0ZXJpYWxTZWNyZXQ");
    expectNoKeyMaterial(err);
  });

  it.each([
    [
      "a SEC1 key",
      (k: Record<string, unknown>) => ({
        privateKeyPem: (k.privateKeyPem as string).replaceAll("PRIVATE KEY", "EC PRIVATE KEY"),
      }),
      "keys.json.keys.0.privateKeyPem",
    ],
    ["a malformed kid", () => ({ kid: "short" }), "keys.json.keys.0.kid"],
    ["an unknown alg", () => ({ alg: "HS256" }), "keys.json.keys.0.alg"],
    ["a bad date", () => ({ activateAt: "tomorrow" }), "keys.json.keys.0.activateAt"],
    ["an unknown field", () => ({ d: "secret" }), "keys.json.keys.0"],
  ])("refuses %s naming the field", (_, patch, field) => {
    const err = validationError(() =>
      parseRing(withKeys(text, (keys) => Object.assign(keys[0]!, patch(keys[0]!)))),
    );
    expect(err.field).toBe(field);
    expectNoKeyMaterial(err);
  });

  it("refuses another version and more than 64 keys", () => {
    const doc = JSON.parse(text) as { version: number; keys: unknown[] };
    expect(validationError(() => parseRing(JSON.stringify({ ...doc, version: 2 }))).field).toBe(
      "keys.json.version",
    );
    const many = { ...doc, keys: Array.from({ length: 65 }, () => doc.keys[0]) };
    const err = validationError(() => parseRing(JSON.stringify(many)));
    expect(err.field).toBe("keys.json.keys");
    expectNoKeyMaterial(err);
  });

  // The schedule bounds how many retired keys are kept: one that would grow
  // the ring past what is stored (rotation 10 s, retention 3660 s) is refused
  // up front, and every ring an accepted schedule makes round-trips.
  it("refuses a schedule whose ring would outgrow storage, and round-trips rings of accepted ones", () => {
    const tooFast = validationError(() =>
      checkSchedule({ rotationPeriodMs: 10_000, publishAheadMs: 2_000, retentionMs: 3_660_000 }),
    );
    expect(tooFast).toMatchObject({ field: "rotationPeriod", rule: "ring-size" });
    const schedule = checkSchedule({
      rotationPeriodMs: 70_000,
      publishAheadMs: 2_000,
      retentionMs: 3_660_000,
    });
    const generate = (c: number, a: number) => generateJwtKey("ES256", c, a);
    let ring: KeyRingState = [];
    for (let t = T0; t <= T0 + 3_700_000; t += 5_000) ring = planRotation(ring, t, schedule, generate).ring;
    expect(parseRing(serializeRing(ring))).toHaveLength(ring.length);
  });

  // Every algorithm CUSTODY_JWT_ALG accepts makes keys that store and load.
  it.each(["ES384", "RS256", "PS256"] as const)("generates and stores a %s key", (alg) => {
    const k = generateJwtKey(alg, sec(0), sec(0));
    expect(parseRing(serializeRing([k]))[0]?.kid).toBe(k.kid);
  });
});

describe("checkKeyFitsAlg", () => {
  const p256 = generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey;
  const p384 = generateKeyPairSync("ec", { namedCurve: "P-384" }).publicKey;
  const rsa2048 = generateKeyPairSync("rsa", { modulusLength: 2048 }).publicKey;
  const rsa1024 = generateKeyPairSync("rsa", { modulusLength: 1024 }).publicKey;
  const ed = generateKeyPairSync("ed25519").publicKey;

  it.each([
    [p256, "ES256"],
    [p384, "ES384"],
    [rsa2048, "RS256"],
    [rsa2048, "PS256"],
  ] as const)("accepts a fitting key (%#)", (key, alg) => {
    expect(() => checkKeyFitsAlg(key, alg, "f")).not.toThrow();
  });

  it.each([
    [p384, "ES256"],
    [p256, "ES384"],
    [rsa2048, "ES256"],
    [p256, "RS256"],
    [rsa1024, "RS256"],
    [rsa1024, "PS256"],
    [ed, "ES256"],
  ] as const)("refuses a key that does not fit (%#)", (key, alg) => {
    const err = validationError(() => checkKeyFitsAlg(key, alg, "spec.key"));
    expect(err.field).toBe("spec.key");
    expect(err.rule).toBe("key-type");
    expect(err.message).toContain(alg);
  });
});

describe("publicJwk", () => {
  const k = generateJwtKey("ES256", sec(0), sec(0));

  it("publishes the public members with use, alg and kid", () => {
    const jwk = publicJwk(k);
    const full = k.publicKey.export({ format: "jwk" });
    expect(jwk).toEqual({
      kty: "EC",
      crv: "P-256",
      x: full.x,
      y: full.y,
      use: "sig",
      alg: "ES256",
      kid: k.kid,
    });
  });

  it("marks a SPIFFE bundle authority jwt-svid without alg", () => {
    const jwk = publicJwk(k, "jwt-svid");
    expect(jwk.use).toBe("jwt-svid");
    expect(jwk.kid).toBe(k.kid);
    expect(jwk).not.toHaveProperty("alg");
  });

  it("never carries private members, even for an RSA key", () => {
    const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const rsa: JwtKey = { kid: "rsa", alg: "RS256", privateKey, publicKey, createdAt: 0, activateAt: 0 };
    for (const jwk of [publicJwk(k), publicJwk(rsa), publicJwk(rsa, "jwt-svid")]) {
      for (const m of ["d", "p", "q", "dp", "dq", "qi"]) expect(jwk).not.toHaveProperty(m);
    }
    expect(publicJwk(rsa)).toMatchObject({ kty: "RSA", e: "AQAB", alg: "RS256", use: "sig" });
  });
});
