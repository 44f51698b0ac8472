// Delegation assertions: real JWTs signed with jose (ES256, RS256, a PEM
// key, a remote JWK Set served over real TLS on 127.0.0.1), checked by
// webhook/assertions.ts and the pure rules in core/admission/assertion.ts.
// Every rule is exercised by a token that breaks exactly that rule.
import { createHash, generateKeyPairSync, webcrypto } from "node:crypto";
import { createServer, request, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import * as x509 from "@peculiar/x509";
import fc from "fast-check";
import {
  CompactSign,
  type CryptoKey,
  exportJWK,
  exportSPKI,
  type FetchImplementation,
  generateKeyPair,
  type JWK,
} from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ASSERTION_FIELD,
  type AssertionIssuer,
  type AssertionIssuerInput,
  checkAssertionClaims,
  parseAssertionIssuers,
  parseAssertionIssuersJson,
} from "../../core/admission/assertion.ts";
import { parseAgentTaskSpec } from "../../core/api/v1alpha1.ts";
import { identitySpecDigest } from "../../core/delegation.ts";
import { ValidationError } from "../../core/errors.ts";
import {
  type AssertionRequestContext,
  type AssertionVerifier,
  createAssertionVerifier,
  JWKS_UNAVAILABLE_RULE,
  loadAssertionIssuers,
} from "../../webhook/assertions.ts";

const NOW = Date.parse("2030-01-01T12:00:00Z");
const NOW_S = NOW / 1000;
const ISS = "https://delegation.example.com";
const WF_ISS = "https://workflows.example.com";
const PEM_ISS = "https://pem.example.com";

const spec = parseAgentTaskSpec({
  agent: { name: "fixer" },
  scope: ["read:repos/acme/*", "write:repos/acme/api/issues"],
  serviceAccountName: "fixer",
  delegator: { kind: "User", name: "alice@example.com" },
});
const ctx: AssertionRequestContext = {
  requester: "system:serviceaccount:ci:pipeline",
  namespace: "agents",
  name: "fix-4711",
  spec,
  now: NOW,
};

interface Signing {
  alg: string;
  key: CryptoKey | Uint8Array;
  kid?: string;
  typ?: string;
}

let es: { privateKey: CryptoKey; jwk: JWK };
let rs: { privateKey: CryptoKey; jwk: JWK; pem: string };
let stranger: { privateKey: CryptoKey };
let issuers: AssertionIssuer[];
let verifier: AssertionVerifier;
let ES: Signing;

function claims(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    iss: ISS,
    sub: "alice@example.com",
    aud: "custody.dev",
    iat: NOW_S - 30,
    exp: NOW_S + 270,
    jti: "4f0c7a1e-9b1d-4c1e-8f4a-2b7f7f0b3c11",
    custody: {
      delegator: { kind: "User", name: "alice@example.com" },
      requester: ctx.requester,
      namespace: ctx.namespace,
      name: ctx.name,
      specDigest: identitySpecDigest(spec),
    },
    ...overrides,
  };
}

/** Signs any payload as is (CompactSign, so claims can be malformed on purpose). */
async function sign(payload: unknown, s: Signing = ES): Promise<string> {
  return new CompactSign(new TextEncoder().encode(JSON.stringify(payload)))
    .setProtectedHeader({ alg: s.alg, ...(s.kid ? { kid: s.kid } : {}), ...(s.typ ? { typ: s.typ } : {}) })
    .sign(s.key);
}

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");

/** Verifies and returns the refusal, checking it never quotes the token. */
async function refusal(
  token: string,
  c: AssertionRequestContext = ctx,
  v = verifier,
): Promise<ValidationError> {
  try {
    await v.verify(token, c);
  } catch (e) {
    if (!(e instanceof ValidationError)) throw e;
    const [, payload, signature] = token.split(".");
    if (signature && signature.length > 20) expect(e.message).not.toContain(signature);
    if (payload && payload.length > 20) expect(e.message).not.toContain(payload);
    expect(e.message).toContain(e.field);
    return e;
  }
  throw new Error("the assertion was accepted");
}

beforeAll(async () => {
  const esPair = await generateKeyPair("ES256", { extractable: true });
  es = { privateKey: esPair.privateKey, jwk: { ...(await exportJWK(esPair.publicKey)), kid: "es-1" } };
  const rsPair = await generateKeyPair("RS256", { extractable: true });
  rs = {
    privateKey: rsPair.privateKey,
    jwk: { ...(await exportJWK(rsPair.publicKey)), kid: "rs-1" },
    pem: await exportSPKI(rsPair.publicKey),
  };
  stranger = { privateKey: (await generateKeyPair("ES256")).privateKey };
  ES = { alg: "ES256", key: es.privateKey, kid: "es-1" };
  issuers = parseAssertionIssuers([
    { issuer: ISS, jwks: { keys: [es.jwk, rs.jwk] } },
    { issuer: WF_ISS, jwks: { keys: [es.jwk] }, kinds: ["Workflow"] },
    { issuer: PEM_ISS, publicKeyPem: rs.pem, algorithms: ["RS256"], maxLifetimeSeconds: 120 },
  ]);
  verifier = createAssertionVerifier(issuers);
});

describe("a valid assertion", () => {
  it("is accepted (ES256 from a JWK Set) and yields issuer, subject, jti and the token's digest", async () => {
    const token = await sign(claims());
    const v = await verifier.verify(token, ctx);
    expect(v).toEqual({
      issuer: ISS,
      subject: "alice@example.com",
      jti: "4f0c7a1e-9b1d-4c1e-8f4a-2b7f7f0b3c11",
      delegator: { kind: "User", name: "alice@example.com" },
      issuedAt: new Date((NOW_S - 30) * 1000),
      expiresAt: new Date((NOW_S + 270) * 1000),
      acceptedUntil: new Date((NOW_S + 270 + 60) * 1000),
      digest: createHash("sha256").update(token).digest("hex"),
    });
  });

  it("is accepted with RS256 from the same JWK Set, an audience list and typ JWT", async () => {
    const token = await sign(claims({ aud: ["https://other.example", "custody.dev"] }), {
      alg: "RS256",
      key: rs.privateKey,
      kid: "rs-1",
      typ: "JWT",
    });
    expect((await verifier.verify(token, ctx)).issuer).toBe(ISS);
  });

  it("is accepted from an issuer configured with one PEM key, and typ custody-delegation+jwt", async () => {
    const token = await sign(claims({ iss: PEM_ISS, exp: NOW_S + 90 }), {
      alg: "RS256",
      key: rs.privateKey,
      typ: "application/custody-delegation+jwt",
    });
    expect((await verifier.verify(token, ctx)).issuer).toBe(PEM_ISS);
  });

  it("binds only identity fields: a non-identity spec change (revoked) keeps it valid", async () => {
    const token = await sign(claims());
    await expect(verifier.verify(token, { ...ctx, spec: { ...spec, revoked: true } })).resolves.toBeDefined();
  });

  it("binds a ServiceAccount delegator with its namespace", async () => {
    const saSpec = parseAgentTaskSpec({
      ...spec,
      delegator: { kind: "ServiceAccount", name: "deployer", namespace: "ci" },
    });
    const custody = {
      ...(claims().custody as object),
      delegator: { kind: "ServiceAccount", name: "deployer", namespace: "ci" },
      specDigest: identitySpecDigest(saSpec),
    };
    const token = await sign(claims({ sub: "deployer", custody }));
    expect((await verifier.verify(token, { ...ctx, spec: saSpec })).delegator).toEqual({
      kind: "ServiceAccount",
      name: "deployer",
      namespace: "ci",
    });
    const otherNs = await sign(
      claims({
        sub: "deployer",
        custody: { ...custody, delegator: { ...custody.delegator, namespace: "prod" } },
      }),
    );
    const e = await refusal(otherNs, { ...ctx, spec: saSpec });
    expect([e.field, e.rule]).toEqual([`${ASSERTION_FIELD}.custody.delegator`, "delegator"]);
  });
});

describe("the token and its signature", () => {
  it("refuses a missing, oversized or malformed token", async () => {
    await expect(verifier.verify(undefined, ctx)).rejects.toMatchObject({ rule: "present" });
    await expect(verifier.verify("", ctx)).rejects.toMatchObject({ rule: "present" });
    const big = await sign(claims({ pad: "x".repeat(9000) }));
    expect((await refusal(big)).rule).toBe("max-length");
    expect((await refusal("not-a-jwt")).rule).toBe("malformed");
    expect((await refusal("a.b.c")).rule).toBe("malformed");
  });

  it("refuses an issuer that is not configured, naming the configured ones", async () => {
    const e = await refusal(await sign(claims({ iss: "https://evil.example" })));
    expect([e.field, e.rule]).toEqual([`${ASSERTION_FIELD}.iss`, "issuer"]);
    expect(e.message).toContain(ISS);
    expect((await refusal(await sign(claims({ iss: undefined })))).rule).toBe("issuer");
  });

  it("refuses an unknown kid", async () => {
    const e = await refusal(await sign(claims(), { ...ES, kid: "es-2" }));
    expect([e.field, e.rule]).toEqual([`${ASSERTION_FIELD}.header.kid`, "kid"]);
  });

  it("refuses a key of another issuer: the workflow issuer's key does not sign for the PEM issuer", async () => {
    const e = await refusal(await sign(claims({ iss: PEM_ISS }), ES));
    expect(e.rule).toBe("alg"); // PEM_ISS accepts RS256 only
    // The workflow issuer publishes only es-1: RS256 from the first issuer's key set does not verify there.
    const rsForWf = await sign(claims({ iss: WF_ISS }), { alg: "RS256", key: rs.privateKey, kid: "rs-1" });
    expect((await refusal(rsForWf)).rule).toBe("kid");
  });

  it("refuses a bad signature: a stranger's key under a known kid, and a tampered payload", async () => {
    const forged = await sign(claims(), { alg: "ES256", key: stranger.privateKey, kid: "es-1" });
    expect((await refusal(forged)).rule).toBe("signature");
    const genuine = await sign(claims());
    const [h, , s] = genuine.split(".");
    const tampered = `${h}.${b64(claims({ custody: { ...(claims().custody as object), requester: "mallory" } }))}.${s}`;
    expect((await refusal(tampered, { ...ctx, requester: "mallory" })).rule).toBe("signature");
  });

  it("refuses alg none", async () => {
    const unsigned = `${b64({ alg: "none" })}.${b64(claims())}.`;
    const e = await refusal(unsigned);
    expect([e.field, e.rule]).toEqual([`${ASSERTION_FIELD}.header.alg`, "alg"]);
  });

  it("refuses HS256, including one keyed with the issuer's public key (algorithm confusion)", async () => {
    const secret = new TextEncoder().encode("a shared secret that is long enough!");
    expect((await refusal(await sign(claims(), { alg: "HS256", key: secret, kid: "es-1" }))).rule).toBe(
      "alg",
    );
    const publicBytes = new TextEncoder().encode(rs.pem);
    expect(
      (await refusal(await sign(claims({ iss: PEM_ISS }), { alg: "HS256", key: publicBytes }))).rule,
    ).toBe("alg");
  });

  it("refuses a typ that says another kind of token", async () => {
    const e = await refusal(await sign(claims(), { ...ES, typ: "at+jwt" }));
    expect([e.field, e.rule]).toEqual([`${ASSERTION_FIELD}.header.typ`, "typ"]);
  });
});

describe("lifetime", () => {
  it("refuses an expired assertion, with 60 s of clock skew at the boundary", async () => {
    const e = await refusal(await sign(claims({ iat: NOW_S - 400, exp: NOW_S - 61 })));
    expect([e.field, e.rule]).toEqual([`${ASSERTION_FIELD}.exp`, "expired"]);
    expect((await refusal(await sign(claims({ iat: NOW_S - 400, exp: NOW_S - 60 })))).rule).toBe("expired");
    await expect(
      verifier.verify(await sign(claims({ iat: NOW_S - 400, exp: NOW_S - 59 })), ctx),
    ).resolves.toBeDefined();
  });

  it("refuses one that lives longer than the issuer allows", async () => {
    const e = await refusal(await sign(claims({ iat: NOW_S, exp: NOW_S + 601 })));
    expect([e.field, e.rule]).toEqual([`${ASSERTION_FIELD}.exp`, "max-lifetime"]);
    await expect(
      verifier.verify(await sign(claims({ iat: NOW_S, exp: NOW_S + 600 })), ctx),
    ).resolves.toBeDefined();
    // The PEM issuer allows 120 s.
    const pem = { alg: "RS256", key: rs.privateKey };
    expect(
      (await refusal(await sign(claims({ iss: PEM_ISS, iat: NOW_S, exp: NOW_S + 121 }), pem))).rule,
    ).toBe("max-lifetime");
    expect((await refusal(await sign(claims({ iat: NOW_S, exp: NOW_S })))).rule).toBe("lifetime");
  });

  it("refuses an iat in the future beyond the skew, and a future nbf", async () => {
    const e = await refusal(await sign(claims({ iat: NOW_S + 61, exp: NOW_S + 300 })));
    expect([e.field, e.rule]).toEqual([`${ASSERTION_FIELD}.iat`, "issued-in-future"]);
    await expect(
      verifier.verify(await sign(claims({ iat: NOW_S + 60, exp: NOW_S + 300 })), ctx),
    ).resolves.toBeDefined();
    const nbf = await refusal(await sign(claims({ nbf: NOW_S + 61 })));
    expect([nbf.field, nbf.rule]).toEqual([`${ASSERTION_FIELD}.nbf`, "not-yet-valid"]);
  });

  it("requires exp and iat as numbers", async () => {
    expect((await refusal(await sign(claims({ exp: undefined })))).rule).toBe("required");
    expect((await refusal(await sign(claims({ iat: undefined })))).rule).toBe("required");
    const e = await refusal(await sign(claims({ exp: String(NOW_S + 100) })));
    expect([e.field, e.rule]).toEqual([`${ASSERTION_FIELD}.exp`, "type"]);
  });
});

describe("registered claims", () => {
  it("refuses a missing or malformed jti", async () => {
    const e = await refusal(await sign(claims({ jti: undefined })));
    expect([e.field, e.rule]).toEqual([`${ASSERTION_FIELD}.jti`, "jti"]);
    expect((await refusal(await sign(claims({ jti: "" })))).rule).toBe("jti");
    expect((await refusal(await sign(claims({ jti: "x".repeat(129) })))).rule).toBe("jti");
    expect((await refusal(await sign(claims({ jti: "has space" })))).rule).toBe("jti");
    expect((await refusal(await sign(claims({ jti: 42 })))).rule).toBe("jti");
    await expect(verifier.verify(await sign(claims({ jti: "x".repeat(128) })), ctx)).resolves.toBeDefined();
  });

  it("refuses an audience that is not Custody's", async () => {
    const e = await refusal(await sign(claims({ aud: "https://api.example.com" })));
    expect([e.field, e.rule]).toEqual([`${ASSERTION_FIELD}.aud`, "audience"]);
    expect((await refusal(await sign(claims({ aud: undefined })))).rule).toBe("audience");
    expect((await refusal(await sign(claims({ aud: [] })))).rule).toBe("audience");
  });

  it("refuses a subject other than the delegator's name", async () => {
    const e = await refusal(await sign(claims({ sub: "bob@example.com" })));
    expect([e.field, e.rule]).toEqual([`${ASSERTION_FIELD}.sub`, "subject"]);
  });
});

describe("the binding to this request", () => {
  const custody = () => claims().custody as Record<string, unknown>;

  it("refuses another requester", async () => {
    const token = await sign(claims());
    const e = await refusal(token, { ...ctx, requester: "mallory" });
    expect([e.field, e.rule]).toEqual([`${ASSERTION_FIELD}.custody.requester`, "requester"]);
    expect(e.message).toContain('"mallory"');
  });

  it("refuses another namespace or name", async () => {
    const token = await sign(claims());
    const ns = await refusal(token, { ...ctx, namespace: "other" });
    expect([ns.field, ns.rule]).toEqual([`${ASSERTION_FIELD}.custody.namespace`, "namespace"]);
    const name = await refusal(token, { ...ctx, name: "fix-4712" });
    expect([name.field, name.rule]).toEqual([`${ASSERTION_FIELD}.custody.name`, "name"]);
  });

  it("refuses a spec whose identity differs in any one field", async () => {
    const token = await sign(claims());
    const changed: Array<Record<string, unknown>> = [
      { scope: ["read:repos/acme/*", "write:repos/acme/*"] },
      { agent: { name: "fixer2" } },
      { serviceAccountName: "other" },
      { ttl: "2h" },
      { deadline: "2030-01-02T00:00:00Z" },
      { audiences: ["https://api.example.com"] },
      { parentRef: { name: "parent" } },
    ];
    for (const change of changed) {
      const e = await refusal(token, { ...ctx, spec: { ...spec, ...change } });
      expect([e.field, e.rule]).toEqual([`${ASSERTION_FIELD}.custody.specDigest`, "spec-digest"]);
    }
  });

  it("refuses a delegator other than spec.delegator", async () => {
    const token = await sign(
      claims({
        sub: "bob@example.com",
        custody: { ...custody(), delegator: { kind: "User", name: "bob@example.com" } },
      }),
    );
    const e = await refusal(token);
    expect([e.field, e.rule]).toEqual([`${ASSERTION_FIELD}.custody.delegator`, "delegator"]);
    const group = await sign(
      claims({ custody: { ...custody(), delegator: { kind: "Group", name: "alice@example.com" } } }),
    );
    expect((await refusal(group)).rule).toBe("delegator");
    const noDelegator = { ...spec, delegator: undefined };
    expect((await refusal(await sign(claims()), { ...ctx, spec: noDelegator })).rule).toBe("delegator");
  });

  it("refuses a kind the issuer may not assert (a workflow issuer asserting a User)", async () => {
    const e = await refusal(await sign(claims({ iss: WF_ISS })));
    expect([e.field, e.rule]).toEqual([`${ASSERTION_FIELD}.custody.delegator.kind`, "kind-not-allowed"]);
    const wfSpec = parseAgentTaskSpec({ ...spec, delegator: { kind: "Workflow", name: "release-pipeline" } });
    const ok = await sign(
      claims({
        iss: WF_ISS,
        sub: "release-pipeline",
        custody: {
          ...custody(),
          delegator: { kind: "Workflow", name: "release-pipeline" },
          specDigest: identitySpecDigest(wfSpec),
        },
      }),
    );
    expect((await verifier.verify(ok, { ...ctx, spec: wfSpec })).delegator.kind).toBe("Workflow");
  });

  it("refuses a missing custody claim or a malformed digest", async () => {
    expect((await refusal(await sign(claims({ custody: undefined })))).field).toBe(
      `${ASSERTION_FIELD}.custody`,
    );
    const e = await refusal(await sign(claims({ custody: { ...custody(), specDigest: "ABC" } })));
    expect([e.field, e.rule]).toEqual([`${ASSERTION_FIELD}.custody.specDigest`, "spec-digest"]);
  });
});

describe("property: any single mutation of a bound claim is refused", () => {
  type Path = readonly string[];
  const bound: Path[] = [
    ["iss"],
    ["sub"],
    ["aud"],
    ["custody", "delegator", "kind"],
    ["custody", "delegator", "name"],
    ["custody", "delegator", "namespace"],
    ["custody", "requester"],
    ["custody", "namespace"],
    ["custody", "name"],
    ["custody", "specDigest"],
  ];
  const get = (o: unknown, p: Path): unknown =>
    p.reduce<unknown>(
      (v, k) => (v && typeof v === "object" ? (v as Record<string, unknown>)[k] : undefined),
      o,
    );
  function set(o: Record<string, unknown>, p: Path, value: unknown): Record<string, unknown> {
    const copy = structuredClone(o);
    let cur = copy;
    for (const k of p.slice(0, -1)) cur = cur[k] as Record<string, unknown>;
    const last = p[p.length - 1]!;
    if (value === undefined) delete cur[last];
    else cur[last] = value;
    return copy;
  }
  // Replacement values: other strings (close ones included), other types, or absence.
  const replacement = (original: unknown) =>
    fc
      .oneof(
        fc.string({ maxLength: 40 }),
        fc.constantFrom(
          "alice@example.com ",
          "Alice@example.com",
          "custody.dev/",
          "User",
          "Workflow",
          "agents",
        ),
        fc.constant(typeof original === "string" ? `${original}x` : "x"),
        fc.integer(),
        fc.constant(null),
        fc.constant(undefined),
        fc.array(fc.string({ maxLength: 8 }), { maxLength: 2 }),
      )
      // aud: a list still containing the audience is the same binding.
      .filter(
        (v) =>
          JSON.stringify(v) !== JSON.stringify(original) && !(Array.isArray(v) && v.includes("custody.dev")),
      );

  const mutation = fc
    .constantFrom(...bound)
    .chain((path) => replacement(get(claims(), path)).map((value) => ({ path, value })));

  it("in the pure checks (many runs)", () => {
    const cfg = issuers[0]!;
    fc.assert(
      fc.property(mutation, ({ path, value }) => {
        const payload = set(claims(), path, value);
        expect(() =>
          checkAssertionClaims(payload, {
            issuer: cfg,
            requester: ctx.requester,
            namespace: ctx.namespace,
            name: ctx.name,
            spec,
            now: NOW,
          }),
        ).toThrow(ValidationError);
      }),
      { numRuns: 500 },
    );
  });

  it("end to end, signed and verified", async () => {
    await fc.assert(
      fc.asyncProperty(mutation, async ({ path, value }) => {
        const token = await sign(set(claims(), path, value));
        await expect(verifier.verify(token, ctx)).rejects.toBeInstanceOf(ValidationError);
      }),
      { numRuns: 60 },
    );
  });
});

describe("remote JWK Set (jwksUri over real TLS)", () => {
  let server: Server;
  let ca: string;
  let url: string;
  let served: { keys: JWK[] };
  let fetches = 0;
  let down = false;

  /** fetch that trusts the test CA: what NODE_EXTRA_CA_CERTS gives the operator in production. */
  const trustingFetch: FetchImplementation = (target, options) =>
    new Promise((resolve, reject) => {
      const req = request(
        target,
        { method: "GET", ca, headers: Object.fromEntries(options.headers), signal: options.signal },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => resolve(new Response(Buffer.concat(chunks), { status: res.statusCode ?? 0 })));
          res.on("error", reject);
        },
      );
      req.on("error", reject);
      req.end();
    });

  beforeAll(async () => {
    const alg = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
    const keys = (await webcrypto.subtle.generateKey(alg, true, [
      "sign",
      "verify",
    ])) as webcrypto.CryptoKeyPair;
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: "01",
      name: "CN=127.0.0.1",
      notBefore: new Date(Date.now() - 60_000),
      notAfter: new Date(Date.now() + 3_600_000),
      keys,
      signingAlgorithm: alg,
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.SubjectAlternativeNameExtension([{ type: "ip", value: "127.0.0.1" }]),
      ],
    });
    ca = cert.toString("pem");
    const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey));
    const key = `-----BEGIN PRIVATE KEY-----\n${pkcs8.toString("base64")}\n-----END PRIVATE KEY-----\n`;
    served = { keys: [es.jwk] };
    server = createServer({ cert: ca, key }, (req, res) => {
      fetches++;
      if (down || req.url !== "/jwks.json") {
        res.writeHead(down ? 503 : 404).end();
        return;
      }
      res.writeHead(200, { "content-type": "application/jwk-set+json" }).end(JSON.stringify(served));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    url = `https://127.0.0.1:${(server.address() as AddressInfo).port}/jwks.json`;
  });

  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  const remoteIssuer = () => parseAssertionIssuers([{ issuer: ISS, jwksUri: url }]);

  it("verifies, caches the keys, and refetches for a new kid only after the cooldown", async () => {
    const v = createAssertionVerifier(remoteIssuer(), { fetch: trustingFetch, jwksCooldownMs: 200 });
    const before = fetches;
    await v.verify(await sign(claims()), ctx);
    await v.verify(await sign(claims({ jti: "second" })), ctx);
    expect(fetches - before).toBe(1);

    // The issuer rotates in a new key: within the cooldown an unknown kid is refused without a fetch.
    const next = await generateKeyPair("ES256", { extractable: true });
    served = { keys: [es.jwk, { ...(await exportJWK(next.publicKey)), kid: "es-2" }] };
    const rotated = await sign(claims({ jti: "third" }), { alg: "ES256", key: next.privateKey, kid: "es-2" });
    expect((await refusal(rotated, ctx, v)).rule).toBe("kid");
    expect(fetches - before).toBe(1);
    await new Promise((r) => setTimeout(r, 250));
    await expect(v.verify(rotated, ctx)).resolves.toMatchObject({ jti: "third" });
    expect(fetches - before).toBe(2);
    served = { keys: [es.jwk] };
  });

  it("reports an unreachable or failing endpoint as jwks-unavailable (transient), never as a bad token", async () => {
    down = true;
    try {
      const v = createAssertionVerifier(remoteIssuer(), { fetch: trustingFetch });
      const e = await refusal(await sign(claims()), ctx, v);
      expect(e.rule).toBe(JWKS_UNAVAILABLE_RULE);
      expect(e.message).toContain("try again");
    } finally {
      down = false;
    }
  });

  it("checks TLS: without trusting the test CA the keys are not fetched", async () => {
    const v = createAssertionVerifier(remoteIssuer(), { jwksTimeoutMs: 2_000 });
    const e = await refusal(await sign(claims()), ctx, v);
    expect(e.rule).toBe(JWKS_UNAVAILABLE_RULE);
    expect(e.message).toMatch(/certificate/i);
  });

  it("accepts only https URLs in the configuration", () => {
    expect(() => parseAssertionIssuers([{ issuer: ISS, jwksUri: url.replace("https:", "http:") }])).toThrow(
      expect.objectContaining({ field: "CUSTODY_ASSERTION_ISSUERS[0].jwksUri", rule: "https" }),
    );
  });
});

describe("issuers configuration", () => {
  const config = (cfg: Record<string, unknown>): ValidationError => {
    try {
      parseAssertionIssuers([cfg]);
    } catch (e) {
      if (e instanceof ValidationError) return e;
      throw e;
    }
    throw new Error("accepted");
  };
  const base = (): AssertionIssuerInput => ({ issuer: ISS, jwks: { keys: [es.jwk] } });

  it("applies the defaults", () => {
    expect(parseAssertionIssuers([base()])[0]).toMatchObject({
      audience: "custody.dev",
      algorithms: ["ES256", "RS256", "PS256", "EdDSA"],
      maxLifetimeSeconds: 600,
      kinds: ["User", "Group", "ServiceAccount", "Workflow"],
    });
    expect(parseAssertionIssuersJson("[]")).toEqual([]);
  });

  it("needs exactly one key source", () => {
    expect(config({ issuer: ISS })).toMatchObject({
      field: "CUSTODY_ASSERTION_ISSUERS[0]",
      rule: "key-source",
    });
    expect(config({ ...base(), publicKeyPem: rs.pem }).rule).toBe("key-source");
  });

  it("never accepts none or HS*, and names unknown algorithms", () => {
    expect(config({ ...base(), algorithms: ["none"] })).toMatchObject({
      field: "CUSTODY_ASSERTION_ISSUERS[0].algorithms[0]",
      rule: "alg-none",
    });
    expect(config({ ...base(), algorithms: ["ES256", "HS256"] })).toMatchObject({
      field: "CUSTODY_ASSERTION_ISSUERS[0].algorithms[1]",
      rule: "alg-symmetric",
    });
    expect(config({ ...base(), algorithms: ["ES257"] }).rule).toBe("enum");
    expect(config({ ...base(), algorithms: ["ES256", "ES256"] }).rule).toBe("duplicate");
  });

  it("accepts only public keys", () => {
    const privateJwk = { ...es.jwk, d: "AAAA" };
    expect(config({ issuer: ISS, jwks: { keys: [privateJwk] } })).toMatchObject({
      field: "CUSTODY_ASSERTION_ISSUERS[0].jwks.keys[0]",
      rule: "public-only",
    });
    expect(config({ issuer: ISS, jwks: { keys: [{ kty: "oct", k: "c2VjcmV0" }] } }).rule).toBe("public-only");
    expect(
      config({ issuer: ISS, publicKeyPem: "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n" })
        .rule,
    ).toBe("public-only");
    expect(config({ issuer: ISS, publicKeyPem: "not a key" }).rule).toBe("spki-pem");
    expect(
      config({ issuer: ISS, jwks: { keys: [{ kty: "EC", crv: "P-256", x: "AA", y: "AA" }] } }).rule,
    ).toBe("jwk");
  });

  it("refuses a key that none of the algorithms can use", () => {
    expect(config({ ...base(), algorithms: ["RS256"] })).toMatchObject({
      field: "CUSTODY_ASSERTION_ISSUERS[0].jwks.keys[0]",
      rule: "algorithm-key-mismatch",
    });
    expect(config({ issuer: ISS, publicKeyPem: rs.pem, algorithms: ["ES256"] }).rule).toBe(
      "algorithm-key-mismatch",
    );
    const small = generateKeyPairSync("rsa", { modulusLength: 1024 }).publicKey.export({
      type: "spki",
      format: "pem",
    });
    expect(config({ issuer: ISS, publicKeyPem: String(small) })).toMatchObject({
      field: "CUSTODY_ASSERTION_ISSUERS[0].publicKeyPem",
      rule: "key-type",
    });
  });

  it("caps lifetimes, checks kinds, refuses unknown fields and duplicate issuers", () => {
    expect(config({ ...base(), maxLifetimeSeconds: 3601 })).toMatchObject({
      field: "CUSTODY_ASSERTION_ISSUERS[0].maxLifetimeSeconds",
      rule: "maximum",
    });
    expect(config({ ...base(), kinds: ["Robot"] })).toMatchObject({
      field: "CUSTODY_ASSERTION_ISSUERS[0].kinds[0]",
      rule: "enum",
    });
    expect(config({ ...base(), jwks_uri: "https://x.example/jwks" })).toMatchObject({
      rule: "unknown-field",
    });
    expect(config({ ...base(), jwks_uri: "https://x.example/jwks" }).message).toContain("jwks_uri");
    expect(() => parseAssertionIssuers([base(), base()])).toThrow(
      expect.objectContaining({ field: "CUSTODY_ASSERTION_ISSUERS[1].issuer", rule: "duplicate" }),
    );
    expect(config({ jwks: { keys: [es.jwk] } })).toMatchObject({
      field: "CUSTODY_ASSERTION_ISSUERS[0].issuer",
      rule: "required",
    });
  });

  it("reads the environment: JSON inline or from a file, not both", () => {
    expect(loadAssertionIssuers({})).toEqual([]);
    expect(loadAssertionIssuers({ CUSTODY_ASSERTION_ISSUERS: JSON.stringify([base()]) })[0]!.issuer).toBe(
      ISS,
    );
    expect(() => loadAssertionIssuers({ CUSTODY_ASSERTION_ISSUERS: "{not json" })).toThrow(
      expect.objectContaining({ field: "CUSTODY_ASSERTION_ISSUERS", rule: "json" }),
    );
    expect(() =>
      loadAssertionIssuers({ CUSTODY_ASSERTION_ISSUERS: "[]", CUSTODY_ASSERTION_ISSUERS_FILE: "/x.json" }),
    ).toThrow(expect.objectContaining({ rule: "exclusive" }));
    expect(() =>
      loadAssertionIssuers({ CUSTODY_ASSERTION_ISSUERS_FILE: "/nonexistent/issuers.json" }),
    ).toThrow(expect.objectContaining({ rule: "exists" }));
  });
});
