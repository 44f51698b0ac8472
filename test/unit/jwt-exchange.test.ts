import { generateKeyPairSync } from "node:crypto";
import fc from "fast-check";
import { decodeProtectedHeader, jwtVerify, SignJWT } from "jose";
import { describe, expect, it } from "vitest";
import type { ChainLink } from "../../core/api/v1alpha1.ts";
import { chainDigest } from "../../core/delegation.ts";
import { audienceFileName, collidingAudiences, TOKEN_EXCHANGE_FILE } from "../../core/jwt/audience-files.ts";
import {
  DISCOVERY_PATH,
  discoveryDocument,
  endpointUrl,
  JWKS_PATH,
  jwksDocument,
  TOKEN_PATH,
} from "../../core/jwt/discovery.ts";
import {
  ACCESS_TOKEN_TYPE,
  actClaim,
  decideExchange,
  ExchangeError,
  type ExchangeRequest,
  JWT_TOKEN_TYPE,
  MAX_TOKEN_LENGTH,
  parseExchangeRequest,
  signOboToken,
  subjectOf,
  type TaskFacts,
  TOKEN_EXCHANGE_GRANT,
  type VerifiedClient,
  type VerifiedSubject,
  verifySubjectToken,
} from "../../core/jwt/exchange.ts";
import type { JwtKey } from "../../core/jwt/keys.ts";
import {
  type CustodyClaim,
  custodyClaim,
  MAX_OBO_TTL_MS,
  signJwtSvid,
  tokenExpiry,
  tokenRefreshAt,
} from "../../core/jwt/svid.ts";
import { formatGrant, scopeAllows, scopeIsSubset, validateScope } from "../../core/scope.ts";
import { generateJwtKey } from "../../operator/jwt-keys.ts";

const ISSUER = "https://custody.example";
const NOW = Date.parse("2026-03-01T12:00:00.000Z");
const ROOT_ID = "spiffe://custody.local/ns/team-a/agent/planner/task/plan-1";
const SUB = "spiffe://custody.local/ns/team-a/agent/reviewer/task/review-42";
const TASK_SCOPE = ["read:repos/acme/*", "write:repos/acme/docs"];

const CHAIN: ChainLink[] = [
  { kind: "User", name: "alice@example.com", uid: "u-1", scope: TASK_SCOPE },
  { kind: "AgentTask", name: "plan-1", uid: "uid-plan", scope: TASK_SCOPE },
  { kind: "AgentTask", name: "review-42", uid: "uid-review", scope: TASK_SCOPE },
];
const SPIFFE_IDS: Record<string, string> = { "plan-1": ROOT_ID, "review-42": SUB };

const key = generateJwtKey("ES256", NOW, NOW);
const otherKey = generateJwtKey("ES256", NOW, NOW);
const custody = custodyClaim({
  taskUid: "uid-review",
  policyVersion: "policy-7",
  chain: CHAIN,
  spiffeIdOf: (n) => SPIFFE_IDS[n],
});

function exchangeError(run: () => unknown): ExchangeError {
  try {
    run();
  } catch (e) {
    if (e instanceof ExchangeError) return e;
    throw e;
  }
  throw new Error("expected an ExchangeError");
}

async function rejected(p: Promise<unknown>): Promise<ExchangeError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof ExchangeError) return e;
    throw e;
  }
  throw new Error("expected an ExchangeError");
}

// ---------------------------------------------------------------- request

const GOOD: Array<[string, string]> = [
  ["grant_type", TOKEN_EXCHANGE_GRANT],
  ["subject_token", "eyJhbGciOiJFUzI1NiJ9.e30.c2ln"],
  ["subject_token_type", JWT_TOKEN_TYPE],
  ["audience", "https://api.example"],
];

function form(edit: (p: Array<[string, string]>) => Array<[string, string]> = (p) => p): URLSearchParams {
  return new URLSearchParams(edit(GOOD.map(([k, v]) => [k, v])));
}
const without = (name: string) => (p: Array<[string, string]>) => p.filter(([k]) => k !== name);
const withParam =
  (name: string, value: string) =>
  (p: Array<[string, string]>): Array<[string, string]> => [...p, [name, value]];
const replaced =
  (name: string, value: string) =>
  (p: Array<[string, string]>): Array<[string, string]> =>
    p.map(([k, v]): [string, string] => [k, k === name ? value : v]);

describe("parseExchangeRequest", () => {
  it("accepts a token-exchange request and asks for the whole scope by default", () => {
    expect(parseExchangeRequest(form())).toEqual({
      subjectToken: "eyJhbGciOiJFUzI1NiJ9.e30.c2ln",
      audience: "https://api.example",
      scope: undefined,
    });
  });

  it("parses a requested scope into grants", () => {
    const r = parseExchangeRequest(form(withParam("scope", " read:repos/acme/api  write:repos/acme/docs ")));
    expect(r.scope?.map(formatGrant)).toEqual(["read:repos/acme/api", "write:repos/acme/docs"]);
  });

  it.each([ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE])("accepts requested_token_type %s", (type) => {
    expect(parseExchangeRequest(form(withParam("requested_token_type", type))).audience).toBe(
      "https://api.example",
    );
  });

  it.each([
    ["a repeated audience", withParam("audience", "https://other.example"), "invalid_request", /audience/],
    ["a repeated subject_token", withParam("subject_token", "x.y.z"), "invalid_request", /subject_token/],
    ["a missing grant_type", without("grant_type"), "invalid_request", /grant_type/],
    [
      "another grant_type",
      replaced("grant_type", "client_credentials"),
      "unsupported_grant_type",
      /grant_type/,
    ],
    ["an empty grant_type", replaced("grant_type", ""), "unsupported_grant_type", /grant_type/],
    ["a missing subject_token", without("subject_token"), "invalid_request", /subject_token/],
    ["an empty subject_token", replaced("subject_token", ""), "invalid_request", /subject_token/],
    [
      "an overlong subject_token",
      replaced("subject_token", "a".repeat(MAX_TOKEN_LENGTH + 1)),
      "invalid_request",
      /longer/,
    ],
    ["a missing subject_token_type", without("subject_token_type"), "invalid_request", /subject_token_type/],
    [
      "an access-token subject_token_type",
      replaced("subject_token_type", ACCESS_TOKEN_TYPE),
      "invalid_request",
      /subject_token_type/,
    ],
    ["an actor_token", withParam("actor_token", "a.b.c"), "invalid_request", /actor_token/],
    ["an actor_token_type", withParam("actor_token_type", JWT_TOKEN_TYPE), "invalid_request", /actor_token/],
    [
      "an unknown requested_token_type",
      withParam("requested_token_type", "urn:ietf:params:oauth:token-type:id_token"),
      "invalid_request",
      /requested_token_type/,
    ],
    ["a resource", withParam("resource", "https://api.example/x"), "invalid_target", /resource/],
    ["a missing audience", without("audience"), "invalid_target", /audience/],
    ["an empty audience", replaced("audience", ""), "invalid_target", /audience/],
    ["a malformed scope", withParam("scope", "read:repos/../etc"), "invalid_scope", /scope/],
    ["a scope without a colon", withParam("scope", "read"), "invalid_scope", /scope/],
    ["an empty scope", withParam("scope", "   "), "invalid_scope", /scope/],
    ["a duplicate grant", withParam("scope", "read:a read:a"), "invalid_scope", /duplicate/],
  ] as const)("refuses %s", (_, edit, code, description) => {
    const err = exchangeError(() => parseExchangeRequest(form(edit)));
    expect(err.error).toBe(code);
    expect(err.status).toBe(400);
    expect(err.message).toMatch(description);
  });

  it("never echoes the subject token in a refusal", () => {
    const token = "eyJzZWNyZXQiOiJ0b2tlbiJ9.eyJzdWIiOiJ4In0.c2VjcmV0c2lnbmF0dXJl";
    for (const edit of [without("audience"), withParam("scope", "bad"), withParam("actor_token", "x")]) {
      const err = exchangeError(() =>
        parseExchangeRequest(form((p) => edit(replaced("subject_token", token)(p)))),
      );
      expect(err.message).not.toContain(token);
    }
  });
});

describe("ExchangeError", () => {
  it.each([
    ["invalid_client", 401],
    ["temporarily_unavailable", 503],
    ["server_error", 500],
    ["invalid_request", 400],
    ["invalid_scope", 400],
    ["invalid_target", 400],
    ["unsupported_grant_type", 400],
  ] as const)("maps %s to HTTP %i", (code, status) => {
    expect(new ExchangeError(code, "x").status).toBe(status);
  });
});

// ---------------------------------------------------------------- subject token

const svid = (over: Partial<Parameters<typeof signJwtSvid>[1]> = {}, k: JwtKey = key) =>
  signJwtSvid(k, {
    issuer: ISSUER,
    spiffeId: SUB,
    audience: ISSUER,
    issuedAt: NOW,
    expiresAt: NOW + 300_000,
    jti: "jti-1",
    custody,
    ...over,
  });

const verifyOpts = (over: Partial<Parameters<typeof verifySubjectToken>[1]> = {}) => ({
  issuer: ISSUER,
  keyFor: (kid: string) => (kid === key.kid ? key : undefined),
  algorithms: ["ES256"] as const,
  now: NOW + 1_000,
  ...over,
});

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");

/** A token signed like a JWT-SVID but with a chosen header and payload. */
function customToken(header: Record<string, unknown>, payload: Record<string, unknown>, k: JwtKey = key) {
  return new SignJWT(payload).setProtectedHeader({ alg: k.alg, kid: k.kid, ...header }).sign(k.privateKey);
}

const basePayload = () => ({
  iss: ISSUER,
  sub: SUB,
  aud: ISSUER,
  iat: Math.floor(NOW / 1000),
  exp: Math.floor(NOW / 1000) + 300,
  jti: "jti-1",
  custody,
});

describe("verifySubjectToken", () => {
  it("accepts a JWT-SVID for the issuer signed by a published key", async () => {
    const token = await svid();
    const v = await verifySubjectToken(token, verifyOpts());
    expect(v).toEqual({ sub: SUB, jti: "jti-1", exp: NOW + 300_000, kid: key.kid, custody });
  });

  async function refusal(token: string, opts = verifyOpts()): Promise<ExchangeError> {
    const err = await rejected(verifySubjectToken(token, opts));
    expect(err.error).toBe("invalid_request");
    expect(err.status).toBe(400);
    expect(err.message).not.toContain(token);
    for (const part of token.split(".")) if (part.length > 8) expect(err.message).not.toContain(part);
    return err;
  }

  it("refuses an expired token (exp is exclusive)", async () => {
    const token = await svid();
    expect((await verifySubjectToken(token, verifyOpts({ now: NOW + 299_999 }))).sub).toBe(SUB);
    expect((await refusal(token, verifyOpts({ now: NOW + 300_000 }))).message).toMatch(/expired/);
  });

  it("refuses a token for another audience", async () => {
    const err = await refusal(await svid({ audience: "https://api.example" }));
    expect(err.message).toMatch(/aud/);
  });

  it("refuses a token from another issuer", async () => {
    const err = await refusal(await svid({ issuer: "https://evil.example" }));
    expect(err.message).toMatch(/iss/);
  });

  it("refuses a kid that names no published key", async () => {
    const err = await refusal(await svid({}, otherKey));
    expect(err.message).toMatch(/kid/);
  });

  it("refuses a token signed by another key under a published kid", async () => {
    const forged = await new SignJWT(basePayload())
      .setProtectedHeader({ alg: "ES256", kid: key.kid, typ: "JWT" })
      .sign(otherKey.privateKey);
    expect((await refusal(forged)).message).toMatch(/signature/);
  });

  it("refuses a token whose payload was altered", async () => {
    const [h, , s] = (await svid()).split(".");
    const altered = `${h}.${b64({ ...basePayload(), sub: ROOT_ID })}.${s}`;
    await refusal(altered);
  });

  it("refuses alg none, with or without a kid", async () => {
    for (const header of [
      { alg: "none", typ: "JWT", kid: key.kid },
      { alg: "none", typ: "JWT" },
    ]) {
      await refusal(`${b64(header)}.${b64(basePayload())}.`);
    }
  });

  it("refuses HS256 signed with the public key PEM as the secret", async () => {
    const secret = new TextEncoder().encode(key.publicKey.export({ format: "pem", type: "spki" }).toString());
    const token = await new SignJWT(basePayload())
      .setProtectedHeader({ alg: "HS256", kid: key.kid, typ: "JWT" })
      .sign(secret);
    const err = await refusal(token);
    expect(err.message).toMatch(/alg/);
    // Even if the key's own check were bypassed, HS256 is not an allowed algorithm.
    const other = await new SignJWT(basePayload())
      .setProtectedHeader({ alg: "HS256", typ: "JWT" })
      .sign(secret);
    await refusal(other, verifyOpts({ keyFor: () => key }));
  });

  it("refuses an allowed algorithm that is not the named key's", async () => {
    // Another published key may be ES384; this kid's key is ES256.
    const [, p, s] = (await svid()).split(".");
    const token = `${b64({ alg: "ES384", kid: key.kid, typ: "JWT" })}.${p}.${s}`;
    const err = await refusal(token, verifyOpts({ algorithms: ["ES256", "ES384"] }));
    expect(err.message).toMatch(/ES384 is not the key's ES256/);
  });

  it("refuses typ at+jwt and a missing typ", async () => {
    expect((await refusal(await customToken({ typ: "at+jwt" }, basePayload()))).message).toMatch(/typ/);
    expect((await refusal(await customToken({}, basePayload()))).message).toMatch(/typ/);
  });

  it.each(["sub", "jti", "exp", "iat"])("refuses a token without %s", async (claim) => {
    const payload: Record<string, unknown> = basePayload();
    delete payload[claim];
    await refusal(await customToken({ typ: "JWT" }, payload));
  });

  it("refuses a token without a custody claim", async () => {
    const { custody: _, ...payload } = basePayload();
    expect((await refusal(await customToken({ typ: "JWT" }, payload))).message).toMatch(/custody/);
  });

  it.each([
    ["a short chain digest", { ...custody, chainDigest: "abcd" }],
    ["a one-hop chain", { ...custody, chain: custody.chain.slice(-1) }],
    ["an unknown field", { ...custody, extra: 1 }],
    ["an unknown hop kind", { ...custody, chain: [{ kind: "robot", name: "r" }, ...custody.chain.slice(1)] }],
  ])("refuses a custody claim with %s", async (_, bad) => {
    const err = await refusal(await customToken({ typ: "JWT" }, { ...basePayload(), custody: bad }));
    expect(err.message).toMatch(/custody/);
  });

  it("refuses a custody chain that does not end at sub", async () => {
    const swapped: CustodyClaim = { ...custody, chain: custody.chain.slice(0, 2) };
    const err = await refusal(await svid({ custody: swapped }));
    expect(err.message).toMatch(/does not end at/);
    const userLast: CustodyClaim = {
      ...custody,
      chain: [...custody.chain, { kind: "user", name: SUB }],
    };
    await refusal(await svid({ custody: userLast }));
  });

  it("refuses garbage", async () => {
    await refusal("not-a-jwt");
    await refusal("a.b.c");
  });
});

// ---------------------------------------------------------------- decision

const subject: VerifiedSubject = { sub: SUB, jti: "jti-1", exp: NOW + 300_000, kid: key.kid, custody };
const client: VerifiedClient = { spiffeId: SUB, serialHex: "0a1b2c" };
const facts = (over: Partial<TaskFacts> = {}): TaskFacts => ({
  uid: "uid-review",
  spiffeId: SUB,
  phase: "Issued",
  revoked: false,
  deleting: false,
  audiences: ["https://api.example", "https://ci.example"],
  scope: TASK_SCOPE,
  liveSerials: ["0a1b2c", "99"],
  certificateNotAfter: NOW + 3_600_000,
  deadline: undefined,
  ...over,
});
const request = (over: Partial<ExchangeRequest> = {}): ExchangeRequest => ({
  subjectToken: "x",
  audience: "https://api.example",
  scope: undefined,
  ...over,
});
const decide = (over: Partial<Parameters<typeof decideExchange>[0]> = {}) =>
  decideExchange({ subject, client, task: facts(), request: request(), now: NOW + 250, ...over });

describe("decideExchange", () => {
  it("grants the task's audience and whole scope on behalf of the root principal", () => {
    const grant = decide();
    expect(grant).toEqual({
      audience: "https://api.example",
      scope: TASK_SCOPE,
      issuedAt: NOW,
      expiresAt: NOW + MAX_OBO_TTL_MS,
      subject: { kind: "user", name: "alice@example.com" },
      actors: [SUB, ROOT_ID],
    });
  });

  it("grants a narrower requested scope as requested", () => {
    const grant = decide({ request: request({ scope: validateScope(["read:repos/acme/api"]) }) });
    expect(grant.scope).toEqual(["read:repos/acme/api"]);
  });

  it.each([
    [
      "the client certificate is another agent's",
      { client: { spiffeId: ROOT_ID, serialHex: "0a1b2c" } },
      "invalid_client",
    ],
    ["the certificate serial is not live", { client: { spiffeId: SUB, serialHex: "ff" } }, "invalid_client"],
    ["the task is gone", { task: undefined }, "invalid_request"],
    ["the task was recreated (uid differs)", { task: facts({ uid: "uid-new" }) }, "invalid_request"],
    ["the task is revoked", { task: facts({ revoked: true }) }, "invalid_request"],
    ["the task's phase is Revoked", { task: facts({ phase: "Revoked" }) }, "invalid_request"],
    ["the task is being deleted", { task: facts({ deleting: true }) }, "invalid_request"],
    ["the task is Pending", { task: facts({ phase: "Pending" }) }, "invalid_request"],
    ["the task is Expired", { task: facts({ phase: "Expired" }) }, "invalid_request"],
    ["the task has no phase", { task: facts({ phase: undefined }) }, "invalid_request"],
    ["the task's SPIFFE ID differs", { task: facts({ spiffeId: ROOT_ID }) }, "invalid_request"],
    [
      "the audience is not listed",
      { request: request({ audience: "https://evil.example" }) },
      "invalid_target",
    ],
    [
      "the scope escalates",
      { request: request({ scope: validateScope(["write:repos/acme/api"]) }) },
      "invalid_scope",
    ],
    [
      "the scope widens a prefix",
      { request: request({ scope: validateScope(["read:repos/*"]) }) },
      "invalid_scope",
    ],
    [
      "the scope is any verb",
      { request: request({ scope: validateScope(["*:repos/acme/docs"]) }) },
      "invalid_scope",
    ],
    ["the certificate has expired", { task: facts({ certificateNotAfter: NOW }) }, "invalid_request"],
    ["the task has no certificate", { task: facts({ certificateNotAfter: undefined }) }, "invalid_request"],
    ["the deadline has passed", { task: facts({ deadline: NOW - 1 }) }, "invalid_request"],
  ] as const)("refuses when %s", (_, over, code) => {
    const err = exchangeError(() => decide(over as Partial<Parameters<typeof decideExchange>[0]>));
    expect(err.error).toBe(code);
  });

  it("accepts the previous certificate while it is live", () => {
    expect(decide({ client: { spiffeId: SUB, serialHex: "99" } }).audience).toBe("https://api.example");
  });

  it("bounds the lifetime by 5 minutes, the certificate and the deadline, in whole seconds", () => {
    const now = NOW + 250;
    const cases: Array<[Partial<TaskFacts>, number | undefined, number]> = [
      [{}, undefined, NOW + MAX_OBO_TTL_MS],
      [{}, 60_000, NOW + 60_000],
      [{}, 10 * 60_000, NOW + MAX_OBO_TTL_MS],
      [{ certificateNotAfter: now + 42_900 }, undefined, NOW + 43_000],
      [{ deadline: now + 7_800 }, undefined, NOW + 8_000],
      [{ deadline: now + 100_000, certificateNotAfter: now + 50_000 }, undefined, NOW + 50_000],
    ];
    for (const [over, maxTtlMs, expected] of cases) {
      const grant = decide({ task: facts(over), now, ...(maxTtlMs ? { maxTtlMs } : {}) });
      expect(grant.expiresAt).toBe(expected);
      expect(grant.expiresAt % 1000).toBe(0);
      expect(grant.expiresAt).toBeGreaterThan(now);
      expect(grant.expiresAt - now).toBeLessThanOrEqual(MAX_OBO_TTL_MS);
      expect(grant.expiresAt).toBeLessThanOrEqual(facts(over).certificateNotAfter!);
      expect(grant.expiresAt).toBeLessThanOrEqual(facts(over).deadline ?? Number.POSITIVE_INFINITY);
    }
  });

  it("refuses when less than a second of lifetime would remain", () => {
    const now = NOW + 250;
    expect(exchangeError(() => decide({ now, task: facts({ certificateNotAfter: now + 500 }) })).error).toBe(
      "invalid_request",
    );
  });

  it("names the agents current first, the least recent last", () => {
    const deep = custodyClaim({
      taskUid: "uid-review",
      policyVersion: "p",
      chain: [
        { kind: "Group", name: "admins", uid: "", scope: [] },
        { kind: "AgentTask", name: "a", uid: "1", scope: [] },
        { kind: "AgentTask", name: "b", uid: "2", scope: [] },
        { kind: "AgentTask", name: "review-42", uid: "3", scope: [] },
      ],
      spiffeIdOf: (n) => (n === "review-42" ? SUB : `spiffe://custody.local/ns/x/agent/y/task/${n}`),
    });
    const grant = decide({ subject: { ...subject, custody: deep } });
    expect(grant.actors).toEqual([
      SUB,
      "spiffe://custody.local/ns/x/agent/y/task/b",
      "spiffe://custody.local/ns/x/agent/y/task/a",
    ]);
    expect(grant.subject).toEqual({ kind: "group", name: "admins" });
    // The claim itself is not reordered.
    expect(deep.chain.map((h) => h.name)).toEqual(["admins", "a", "b", "review-42"]);
  });
});

// Grants over a small vocabulary so that random scopes overlap often.
const segment = fc.constantFrom("repos", "acme", "api", "docs", "x");
const grantText = fc
  .record({
    verb: fc.constantFrom("read", "write", "admin", "*"),
    resource: fc.oneof(
      fc.constant("*"),
      fc
        .tuple(fc.array(segment, { minLength: 1, maxLength: 3 }), fc.boolean())
        .map(([segs, prefix]) => segs.join("/") + (prefix ? "/*" : "")),
    ),
  })
  .map(({ verb, resource }) => `${verb}:${resource}`);
const scopeText = fc.uniqueArray(grantText, { minLength: 1, maxLength: 5 });
const action = fc.record({
  verb: fc.constantFrom("read", "write", "admin", "delete"),
  path: fc.array(segment, { minLength: 1, maxLength: 4 }).map((s) => s.join("/")),
});

describe("decideExchange scope (property)", () => {
  it("never grants a scope the task does not hold", () => {
    let granted = 0;
    let refused = 0;
    fc.assert(
      fc.property(
        scopeText,
        fc.oneof(
          scopeText.map((s) => ({ kind: "random" as const, s })),
          fc.constant({ kind: "whole" as const, s: undefined }),
        ),
        fc.array(action, { minLength: 20, maxLength: 20 }),
        (taskScope, req, actions) => {
          const task = validateScope(taskScope);
          const requested = req.s === undefined ? undefined : validateScope(req.s, "scope");
          let grant: ReturnType<typeof decideExchange>;
          try {
            grant = decide({ task: facts({ scope: taskScope }), request: request({ scope: requested }) });
          } catch (e) {
            if (!(e instanceof ExchangeError)) throw e;
            expect(e.error).toBe("invalid_scope");
            // Refused only when something requested is indeed outside the task's scope.
            expect(scopeIsSubset(requested!, task).ok).toBe(false);
            refused++;
            return;
          }
          granted++;
          const got = validateScope([...grant.scope], "granted");
          expect(scopeIsSubset(got, task).ok).toBe(true);
          // Independently of scopeIsSubset: no concrete action is allowed that the task may not do.
          for (const a of actions) if (scopeAllows(got, a)) expect(scopeAllows(task, a)).toBe(true);
          if (requested === undefined) expect(grant.scope).toEqual(taskScope);
          else expect(grant.scope).toEqual(requested.map(formatGrant));
        },
      ),
      { numRuns: 500 },
    );
    expect(granted).toBeGreaterThan(0);
    expect(refused).toBeGreaterThan(0);
  });
});

describe("actClaim", () => {
  it("nests the current actor outermost and the least recent deepest", () => {
    expect(actClaim(["c", "b", "a"])).toEqual({ sub: "c", act: { sub: "b", act: { sub: "a" } } });
    expect(actClaim(["only"])).toEqual({ sub: "only" });
    expect(actClaim([])).toBeUndefined();
  });
});

describe("signOboToken", () => {
  it("signs an at+jwt access token jose verifies, with sub, act, scope and custody", async () => {
    const now = NOW + 250;
    const grant = decide({ now, request: request({ scope: validateScope(["read:repos/acme/api"]) }) });
    const token = await signOboToken(key, { issuer: ISSUER, grant, jti: "obo-1", custody });
    const { payload, protectedHeader } = await jwtVerify(token, key.publicKey, {
      issuer: ISSUER,
      audience: "https://api.example",
      typ: "at+jwt",
      algorithms: ["ES256"],
      currentDate: new Date(now),
    });
    expect(protectedHeader).toEqual({ alg: "ES256", kid: key.kid, typ: "at+jwt" });
    expect(payload).toEqual({
      iss: ISSUER,
      // Kind-qualified: a workflow or group named like a user is never read as that user.
      sub: "user:alice@example.com",
      aud: "https://api.example",
      iat: Math.floor(NOW / 1000),
      exp: Math.floor(grant.expiresAt / 1000),
      jti: "obo-1",
      scope: "read:repos/acme/api",
      client_id: SUB,
      act: { sub: SUB, act: { sub: ROOT_ID } },
      custody: { ...custody, delegator: { kind: "user", name: "alice@example.com" } },
    });
    // Not acceptable as a JWT-SVID subject token.
    await expect(verifySubjectToken(token, verifyOpts({ now }))).rejects.toBeInstanceOf(ExchangeError);
  });

  it("does not verify under another key", async () => {
    const token = await signOboToken(key, { issuer: ISSUER, grant: decide(), jti: "j", custody });
    expect(decodeProtectedHeader(token).kid).toBe(key.kid);
    await expect(
      jwtVerify(token, otherKey.publicKey, { currentDate: new Date(NOW + 1000) }),
    ).rejects.toThrow();
  });
});

// ---------------------------------------------------------------- svid.ts

describe("custodyClaim", () => {
  it("maps every hop kind and names agents by SPIFFE ID", () => {
    const chain: ChainLink[] = [
      { kind: "User", name: "u", uid: "1", scope: [] },
      { kind: "Group", name: "g", uid: "2", scope: [] },
      { kind: "ServiceAccount", name: "system:serviceaccount:ns:sa", uid: "3", scope: [] },
      { kind: "Workflow", name: "wf", uid: "4", scope: [] },
      { kind: "AgentTask", name: "review-42", uid: "5", scope: [] },
    ];
    const claim = custodyClaim({
      taskUid: "5",
      policyVersion: "pv",
      chain,
      spiffeIdOf: (n) => SPIFFE_IDS[n],
    });
    expect(claim).toEqual({
      taskUid: "5",
      policyVersion: "pv",
      chainDigest: chainDigest(chain).toString("hex"),
      chain: [
        { kind: "user", name: "u" },
        { kind: "group", name: "g" },
        { kind: "serviceaccount", name: "system:serviceaccount:ns:sa" },
        { kind: "workflow", name: "wf" },
        { kind: "agent", name: "review-42", spiffeId: SUB },
      ],
    });
  });

  it("digests the chain as the certificate extension does", () => {
    expect(custody.chainDigest).toBe(chainDigest(CHAIN).toString("hex"));
    expect(custody.chainDigest).toMatch(/^[0-9a-f]{64}$/);
    const changed = custodyClaim({
      taskUid: "uid-review",
      policyVersion: "policy-7",
      chain: [{ ...CHAIN[0]!, scope: ["read:*"] }, ...CHAIN.slice(1)],
      spiffeIdOf: (n) => SPIFFE_IDS[n],
    });
    expect(changed.chainDigest).not.toBe(custody.chainDigest);
  });

  it("throws when an agent hop's SPIFFE ID is unknown", () => {
    expect(() =>
      custodyClaim({
        taskUid: "t",
        policyVersion: "p",
        chain: CHAIN,
        spiffeIdOf: (n) => (n === "review-42" ? SUB : undefined),
      }),
    ).toThrow(/plan-1/);
  });
});

describe("tokenExpiry / tokenRefreshAt", () => {
  it("bounds the expiry by ttl, notAfter and deadline in whole seconds", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2 * 10 ** 12 }),
        fc.integer({ min: 1_000, max: 3_600_000 }),
        fc.integer({ min: 0, max: 7_200_000 }),
        fc.option(fc.integer({ min: 0, max: 7_200_000 }), { nil: undefined }),
        (now, ttl, toNotAfter, toDeadline) => {
          const notAfter = now + toNotAfter;
          const deadline = toDeadline === undefined ? undefined : now + toDeadline;
          const exp = tokenExpiry(now, ttl, notAfter, deadline);
          const bound = Math.min(now + ttl, notAfter, deadline ?? Number.POSITIVE_INFINITY);
          expect(exp % 1000).toBe(0);
          expect(exp).toBeLessThanOrEqual(bound);
          expect(exp).toBeGreaterThan(bound - 1000);
        },
      ),
    );
  });

  it("refreshes at half the lifetime", () => {
    expect(tokenRefreshAt(NOW, NOW + 300_000)).toBe(NOW + 150_000);
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 10 ** 12 }),
        fc.integer({ min: 1, max: 10 ** 7 }),
        (iat, life) => {
          const r = tokenRefreshAt(iat, iat + life);
          expect(r).toBeGreaterThanOrEqual(iat);
          expect(r).toBeLessThan(iat + life);
          expect(Math.abs(r - iat - (iat + life - r))).toBeLessThanOrEqual(1);
        },
      ),
    );
  });
});

// ---------------------------------------------------------------- audience files

describe("audienceFileName", () => {
  it("prefixes and sanitises", () => {
    expect(audienceFileName("https://api.example.com/v1")).toBe("jwt-svid.https___api.example.com_v1");
    expect(audienceFileName("sts.amazonaws.com")).toBe("jwt-svid.sts.amazonaws.com");
    expect(audienceFileName("a b\u00e9")).toBe("jwt-svid.a_b_");
  });

  it("yields valid Secret keys of at most 253 characters, distinct for long audiences", () => {
    fc.assert(
      fc.property(
        fc.string({ maxLength: 600, unit: "grapheme" }),
        fc.string({ minLength: 1, maxLength: 50 }),
        (a, tail) => {
          const name = audienceFileName(a);
          expect(name.length).toBeLessThanOrEqual(253);
          expect(name).toMatch(/^jwt-svid\.[-._a-zA-Z0-9]*$/);
          const long = "https://api.example.com/".padEnd(300, "x");
          expect(audienceFileName(long + tail)).not.toBe(audienceFileName(long));
        },
      ),
    );
  });

  it("keeps the readable start of a long audience and tells long ones apart", () => {
    const a = `https://${"a".repeat(300)}/one`;
    const b = `https://${"a".repeat(300)}/two`;
    expect(audienceFileName(a)).not.toBe(audienceFileName(b));
    expect(audienceFileName(a).startsWith("jwt-svid.https___aaaa")).toBe(true);
    expect(audienceFileName(a).length).toBeLessThanOrEqual(253);
    // 200 characters still fit as they are; 201 get a digest.
    expect(audienceFileName("a".repeat(200))).toBe(`jwt-svid.${"a".repeat(200)}`);
    expect(audienceFileName("a".repeat(201))).not.toBe(`jwt-svid.${"a".repeat(201)}`);
    expect(audienceFileName("a".repeat(201)).length).toBeLessThanOrEqual(253);
  });
});

describe("collidingAudiences", () => {
  it("finds audiences that map to an earlier one's file", () => {
    expect(collidingAudiences(["https://a.example", "https://b.example"])).toEqual([]);
    expect(collidingAudiences(["a/b", "x", "a:b", "a_b"])).toEqual([2, 3]);
  });

  it("finds the reserved token-exchange file", () => {
    expect(audienceFileName("token-exchange")).toBe(TOKEN_EXCHANGE_FILE);
    expect(collidingAudiences(["ok", "token-exchange"])).toEqual([1]);
  });

  it("agrees with a brute-force check", () => {
    fc.assert(
      fc.property(
        fc.array(fc.constantFrom("a/b", "a:b", "a.b", "token-exchange", "x", "x y", "x_y"), { maxLength: 6 }),
        (list) => {
          const expected = list
            .map((_, i) => i)
            .filter((i) => {
              const f = audienceFileName(list[i]!);
              return f === TOKEN_EXCHANGE_FILE || list.slice(0, i).some((b) => audienceFileName(b) === f);
            });
          expect(collidingAudiences(list)).toEqual(expected);
        },
      ),
    );
  });
});

// ---------------------------------------------------------------- discovery

describe("discovery documents", () => {
  it("names the issuer and its endpoints", () => {
    const doc = discoveryDocument(ISSUER);
    expect(doc.issuer).toBe(ISSUER);
    expect(doc.jwks_uri).toBe(`${ISSUER}${JWKS_PATH}`);
    expect(doc.token_endpoint).toBe(`${ISSUER}${TOKEN_PATH}`);
    expect(doc.grant_types_supported).toEqual([TOKEN_EXCHANGE_GRANT]);
    expect(doc.token_endpoint_auth_methods_supported).toEqual(["tls_client_auth"]);
    expect(doc.id_token_signing_alg_values_supported).toContain("ES256");
    expect(doc.id_token_signing_alg_values_supported).not.toContain("none");
  });

  it("joins paths without doubling slashes", () => {
    expect(endpointUrl("https://h.example/", TOKEN_PATH)).toBe("https://h.example/token");
    expect(endpointUrl("https://h.example/base//", JWKS_PATH)).toBe("https://h.example/base/keys");
    expect(discoveryDocument("https://h.example/").jwks_uri).toBe("https://h.example/keys");
    expect(DISCOVERY_PATH).toBe("/.well-known/openid-configuration");
  });

  it("publishes only public key members in the JWKS", () => {
    const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const rsaKey: JwtKey = { kid: "rsa-1", alg: "RS256", ...rsa, createdAt: NOW, activateAt: NOW };
    const jwks = jwksDocument([key, otherKey, rsaKey]);
    expect(jwks.keys.map((k) => k.kid)).toEqual([key.kid, otherKey.kid, "rsa-1"]);
    for (const k of jwks.keys) {
      expect(k.use).toBe("sig");
      for (const m of ["d", "p", "q", "dp", "dq", "qi", "k"]) expect(k).not.toHaveProperty(m);
    }
    const text = JSON.stringify(jwks);
    const d = key.privateKey.export({ format: "jwk" }).d!;
    expect(text).not.toContain(d);
    expect(jwks.keys[2]).toMatchObject({ kty: "RSA", alg: "RS256", e: "AQAB" });
    expect(jwksDocument([])).toEqual({ keys: [] });
  });
});

describe("subjectOf", () => {
  it("qualifies the root principal by its kind, so equal names of different kinds never collide", () => {
    const names = [
      subjectOf({ kind: "user", name: "alice" }),
      subjectOf({ kind: "workflow", name: "alice" }),
      subjectOf({ kind: "group", name: "alice" }),
      subjectOf({ kind: "serviceaccount", name: "alice" }),
    ];
    expect(names[0]).toBe("user:alice");
    expect(new Set(names).size).toBe(4);
  });
});
