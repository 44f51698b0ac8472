import { createHash } from "node:crypto";
import { decodeJwt, jwtVerify } from "jose";
import { describe, expect, it } from "vitest";
import type { AgentTask } from "../../core/api/v1alpha1.ts";
import { JWT_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT } from "../../core/jwt/exchange.ts";
import type { JwtKey } from "../../core/jwt/keys.ts";
import { custodyClaim, signJwtSvid } from "../../core/jwt/svid.ts";
import { createIdentityHandler, type IdentityEndpointDeps } from "../../operator/identity-endpoint.ts";
import { generateJwtKey } from "../../operator/jwt-keys.ts";
import type { IdentityRequest, IdentityResponse } from "../../shells/https/identity-server.ts";
import { createLogger } from "../../shells/log.ts";
import {
  AUDIENCE,
  type Call,
  CHAIN,
  ca,
  custody,
  deferred,
  fakeRecorder,
  foreign,
  HOUR,
  ISSUER,
  key,
  minted,
  NOW,
  PARENT,
  peerOf,
  SCOPE,
  SUB,
  T,
  task,
} from "./endpoint-fixtures.ts";

const nextKey = generateJwtKey("ES256", NOW, NOW + HOUR);

function setup(over: Partial<IdentityEndpointDeps> & { recorderCalls?: Call[] } = {}) {
  const rec = fakeRecorder();
  const logLines: string[] = [];
  const clock = { t: T };
  const taskLookups: string[] = [];
  const current = task();
  // The agent above it in the chain: Issued, so its delegation holds.
  const parent = {
    ...task(),
    metadata: { name: "plan-1", namespace: "team-a", uid: "uid-plan" },
  } as AgentTask;
  const deps: IdentityEndpointDeps = {
    issuer: ISSUER,
    trustDomain: "custody.local",
    keys: { published: () => [key, nextKey], signing: () => key },
    trustAnchorsDer: () => ca.bundleDer,
    getTask: (k) => {
      taskLookups.push(k);
      if (k === "team-a/plan-1") return parent;
      return k === "team-a/review-42" ? current : undefined;
    },
    recorder: rec.open,
    jwksMaxAgeSeconds: 123,
    log: createLogger({ name: "test", level: "debug", write: (l) => void logLines.push(l) }),
    now: () => clock.t,
    ...over,
  };
  const handler = createIdentityHandler(deps);
  return { handler, calls: rec.calls, logLines, clock, taskLookups };
}

function request(over: Partial<IdentityRequest> = {}): IdentityRequest {
  return {
    method: "GET",
    path: "/",
    peer: undefined,
    peerRejected: false,
    contentType: "",
    body: Buffer.alloc(0),
    headers: {},
    ...over,
  };
}

function tokenRequest(body: Record<string, string>, over: Partial<IdentityRequest> = {}): IdentityRequest {
  return request({
    method: "POST",
    path: "/token",
    peer: peerOf(minted),
    contentType: "application/x-www-form-urlencoded",
    body: Buffer.from(new URLSearchParams(body).toString()),
    ...over,
  });
}

const subjectToken = (over: Partial<Parameters<typeof signJwtSvid>[1]> = {}, k: JwtKey = key) =>
  signJwtSvid(k, {
    issuer: ISSUER,
    spiffeId: SUB,
    audience: ISSUER,
    issuedAt: NOW,
    expiresAt: NOW + 300_000,
    jti: "svid-jti-1",
    custody,
    ...over,
  });

const form = (token: string, extra: Record<string, string> = {}) => ({
  grant_type: TOKEN_EXCHANGE_GRANT,
  subject_token: token,
  subject_token_type: JWT_TOKEN_TYPE,
  audience: AUDIENCE,
  ...extra,
});

const bodyOf = (r: IdentityResponse) => JSON.parse(r.body) as Record<string, unknown>;
const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");

/** Waits (up to 5 s) until `done` holds. */
async function until(done: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !done(); i++) await new Promise((r) => setTimeout(r, 10));
  if (!done()) throw new Error("condition not reached");
}

// ---------------------------------------------------------------- discovery

describe("discovery and JWKS", () => {
  it("serves the discovery document", async () => {
    const { handler } = setup();
    const r = await handler(request({ path: "/.well-known/openid-configuration" }));
    expect(r.status).toBe(200);
    expect(r.headers["content-type"]).toBe("application/json");
    expect(r.headers["cache-control"]).toMatch(/max-age=\d+/);
    expect(bodyOf(r)).toMatchObject({
      issuer: ISSUER,
      jwks_uri: `${ISSUER}/keys`,
      token_endpoint: `${ISSUER}/token`,
    });
    expect(
      (await handler(request({ method: "HEAD", path: "/.well-known/openid-configuration" }))).status,
    ).toBe(200);
  });

  it("serves the published keys with the configured max-age and an ETag", async () => {
    const { handler } = setup();
    const r = await handler(request({ path: "/keys" }));
    expect(r.status).toBe(200);
    expect(r.headers["content-type"]).toBe("application/jwk-set+json");
    expect(r.headers["cache-control"]).toContain("max-age=123");
    expect(r.headers["cache-control"]).not.toContain("max-age=1230");
    const jwks = bodyOf(r) as { keys: Array<Record<string, string>> };
    expect(jwks.keys.map((k) => k.kid)).toEqual([key.kid, nextKey.kid]);
    for (const k of jwks.keys) for (const m of ["d", "p", "q"]) expect(k).not.toHaveProperty(m);
    expect(r.body).not.toContain(key.privateKey.export({ format: "jwk" }).d!);
    expect(r.headers.etag).toMatch(/^"[A-Za-z0-9_-]{22}"$/);
  });

  it("answers 304 to a matching If-None-Match and 200 when the keys changed", async () => {
    let published = [key];
    const { handler } = setup({ keys: { published: () => published, signing: () => key } });
    const first = await handler(request({ path: "/keys" }));
    const etag = first.headers.etag!;
    const again = await handler(request({ path: "/keys", headers: { "if-none-match": etag } }));
    expect(again.status).toBe(304);
    expect(again.body).toBe("");
    expect(again.headers.etag).toBe(etag);
    expect(again.headers["cache-control"]).toContain("max-age=123");

    expect((await handler(request({ path: "/keys", headers: { "if-none-match": '"other"' } }))).status).toBe(
      200,
    );

    published = [key, nextKey];
    const changed = await handler(request({ path: "/keys", headers: { "if-none-match": etag } }));
    expect(changed.status).toBe(200);
    expect(changed.headers.etag).not.toBe(etag);
  });

  it("refuses other methods and unknown paths", async () => {
    const { handler } = setup();
    const post = await handler(request({ method: "POST", path: "/keys" }));
    expect(post.status).toBe(405);
    expect(post.headers.allow).toBe("GET");
    expect((await handler(request({ path: "/nope" }))).status).toBe(404);
    const get = await handler(request({ path: "/token" }));
    expect(get.status).toBe(405);
    expect(get.headers.allow).toBe("POST");
    expect(get.headers["cache-control"]).toBe("no-store");
  });
});

// ---------------------------------------------------------------- client authentication

describe("token endpoint client authentication", () => {
  async function expectInvalidClient(r: IdentityResponse) {
    expect(r.status).toBe(401);
    expect(bodyOf(r).error).toBe("invalid_client");
    expect(bodyOf(r)).not.toHaveProperty("access_token");
    expect(r.headers["www-authenticate"]).toBe('Mutual-TLS realm="custody"');
    expect(r.headers["cache-control"]).toBe("no-store");
  }

  it("refuses a request without a client certificate", async () => {
    const { handler, calls } = setup();
    const token = await subjectToken();
    await expectInvalidClient(await handler(tokenRequest(form(token), { peer: undefined })));
    expect(calls).toHaveLength(1);
    expect(calls[0]).toMatchObject({
      type: "dev.custody.task.token.refused",
      subject: "token-endpoint",
      rootUid: "token-endpoint",
      data: { error: "invalid_client" },
    });
    expect(String(calls[0]!.data.description)).toMatch(/client certificate/);
    expect(calls[0]!.data).not.toHaveProperty("client");
    expect(JSON.stringify(calls)).not.toContain(token);
  });

  it("refuses a certificate the TLS layer rejected", async () => {
    const { handler } = setup();
    const r = await handler(
      tokenRequest(form(await subjectToken()), {
        peer: undefined,
        peerRejected: true,
        peerError: "CERT_HAS_EXPIRED",
      }),
    );
    await expectInvalidClient(r);
    // The TLS layer's reason, not the "no certificate" refusal.
    expect(String(bodyOf(r).error_description)).toContain("was not accepted (CERT_HAS_EXPIRED)");
  });

  it("refuses a certificate that does not chain to the trust anchors", async () => {
    const { handler } = setup();
    const r = await handler(tokenRequest(form(await subjectToken()), { peer: peerOf(foreign) }));
    await expectInvalidClient(r);
    expect(String(bodyOf(r).error_description)).toMatch(/X\.509-SVID/);
  });

  it("refuses a certificate of another trust domain", async () => {
    const { handler } = setup({ trustDomain: "other.local" });
    await expectInvalidClient(await handler(tokenRequest(form(await subjectToken()))));
  });

  it("refuses an expired client certificate", async () => {
    const { handler, clock } = setup();
    clock.t = NOW + HOUR + 1000;
    await expectInvalidClient(await handler(tokenRequest(form(await subjectToken()))));
  });
});

// ---------------------------------------------------------------- exchange

describe("token exchange", () => {
  it("answers with the access token only after the recorder acknowledged", async () => {
    const ack = deferred();
    const rec = fakeRecorder(() => ack.promise);
    const { handler } = setup({ recorder: rec.open });
    const token = await subjectToken();
    let answer: IdentityResponse | undefined;
    const pending = Promise.resolve(handler(tokenRequest(form(token)))).then((r) => {
      answer = r;
      return r;
    });
    await until(() => rec.calls.length === 1);
    // The event is sent; the answer waits for its acknowledgement.
    await new Promise((r) => setTimeout(r, 50));
    expect(rec.calls).toHaveLength(1);
    expect(answer).toBeUndefined();

    ack.resolve();
    const r = await pending;
    expect(r.status).toBe(200);
    expect(r.headers["cache-control"]).toBe("no-store");
    const body = bodyOf(r);
    expect(body).toMatchObject({
      issued_token_type: "urn:ietf:params:oauth:token-type:access_token",
      token_type: "Bearer",
      expires_in: 300,
      scope: SCOPE.join(" "),
    });
    const accessToken = body.access_token as string;
    const { payload, protectedHeader } = await jwtVerify(accessToken, key.publicKey, {
      issuer: ISSUER,
      audience: AUDIENCE,
      typ: "at+jwt",
      currentDate: new Date(T),
    });
    expect(protectedHeader.kid).toBe(key.kid);
    expect(payload.sub).toBe("user:alice@example.com");
    expect(payload.act).toEqual({ sub: SUB, act: { sub: PARENT } });

    const call = rec.calls[0]!;
    expect(call.type).toBe("dev.custody.task.token.exchanged");
    expect(call.subject).toBe(SUB);
    expect(call.rootUid).toBe("uid-plan");
    expect(call.data).toMatchObject({
      audience: AUDIENCE,
      scope: SCOPE,
      jti: payload.jti,
      kid: key.kid,
      expiresAt: new Date((payload.exp as number) * 1000).toISOString(),
      subject: "user:alice@example.com",
      actors: [SUB, PARENT],
      client: { spiffeId: SUB, serial: minted.serialHex },
      subjectTokenJti: "svid-jti-1",
      context: {
        taskUid: "uid-review",
        namespace: "team-a",
        name: "review-42",
        chainUids: ["uid-plan", "uid-review"],
        rootUid: "uid-plan",
        contextDigest: custody.chainDigest,
      },
    });
    const recorded = JSON.stringify(rec.calls);
    expect(recorded).not.toContain(token);
    expect(recorded).not.toContain(accessToken);
  });

  it("issues a narrower requested scope", async () => {
    const { handler } = setup();
    const r = await handler(tokenRequest(form(await subjectToken(), { scope: "read:repos/acme/api" })));
    expect(r.status).toBe(200);
    expect(decodeJwt(bodyOf(r).access_token as string).scope).toBe("read:repos/acme/api");
  });

  it("fails closed with 503 when the recorder rejects", async () => {
    const rec = fakeRecorder(() => Promise.reject(new Error("kafka down")));
    const { handler, logLines } = setup({ recorder: rec.open });
    const token = await subjectToken();
    const r = await handler(tokenRequest(form(token)));
    expect(r.status).toBe(503);
    expect(bodyOf(r).error).toBe("temporarily_unavailable");
    expect(bodyOf(r)).not.toHaveProperty("access_token");
    expect(r.body).not.toMatch(/eyJ/);
    // The exchange was attempted; its refusal is not recorded, since the
    // stream is what failed (recording it would wait for the stream again).
    expect(rec.calls.map((c) => c.type)).toEqual(["dev.custody.task.token.exchanged"]);
    expect(logLines.join("")).toContain("kafka down");
    expect(logLines.join("")).not.toContain(token);
  });

  it("fails closed with 503 when the recorder cannot be opened", async () => {
    const { handler } = setup({ recorder: () => Promise.reject(new Error("no stream")) });
    const r = await handler(tokenRequest(form(await subjectToken())));
    expect(r.status).toBe(503);
    expect(bodyOf(r)).not.toHaveProperty("access_token");
  });

  it("fails closed with 503 when the acknowledgement does not come in time", async () => {
    const rec = fakeRecorder(() => new Promise<void>(() => {}));
    const { handler } = setup({ recorder: rec.open, recordTimeoutMs: 30 });
    const r = await handler(tokenRequest(form(await subjectToken())));
    expect(r.status).toBe(503);
    expect(bodyOf(r).error).toBe("temporarily_unavailable");
    expect(bodyOf(r)).not.toHaveProperty("access_token");
  });

  it("answers 503 without a signing key", async () => {
    const { handler } = setup({ keys: { published: () => [key], signing: () => undefined } });
    const r = await handler(tokenRequest(form(await subjectToken())));
    expect(r.status).toBe(503);
    expect(bodyOf(r).error).toBe("temporarily_unavailable");
  });

  it("refuses a body that is not form-encoded", async () => {
    const { handler } = setup();
    const r = await handler(tokenRequest(form(await subjectToken()), { contentType: "application/json" }));
    expect(r.status).toBe(400);
    expect(bodyOf(r).error).toBe("invalid_request");
  });
});

// ---------------------------------------------------------------- refusals

describe("refusals", () => {
  async function refusedWith(
    setupOver: Parameters<typeof setup>[0],
    token: string,
    extra: Record<string, string>,
    code: string,
    status = 400,
  ) {
    const s = setup(setupOver);
    const r = await s.handler(tokenRequest(form(token, extra)));
    expect(r.status).toBe(status);
    expect(bodyOf(r).error).toBe(code);
    expect(bodyOf(r)).not.toHaveProperty("access_token");
    expect(r.body).not.toContain(token);
    expect(s.calls).toHaveLength(1);
    const call = s.calls[0]!;
    expect(call.type).toBe("dev.custody.task.token.refused");
    expect(call.data.error).toBe(code);
    expect(call.data.subjectTokenSha256).toBe(sha256(token));
    expect(call.data.client).toEqual({ spiffeId: SUB, serial: minted.serialHex });
    expect(JSON.stringify(s.calls)).not.toContain(token);
    expect(s.logLines.join("")).not.toContain(token);
    return { call, response: r, ...s };
  }

  it("records an audience the task does not list, with its context", async () => {
    const { call } = await refusedWith(
      {},
      await subjectToken(),
      { audience: "https://evil.example" },
      "invalid_target",
    );
    expect(call.subject).toBe(SUB);
    expect(call.rootUid).toBe("uid-plan");
    expect(call.data.audience).toBe("https://evil.example");
    expect(call.data.context).toMatchObject({ taskUid: "uid-review", rootUid: "uid-plan" });
  });

  it("records an expired subject token", async () => {
    const token = await subjectToken({ expiresAt: NOW + 30_000 });
    const { call } = await refusedWith({}, token, {}, "invalid_request");
    expect(String(call.data.description)).toMatch(/expired/);
    expect(call.data).not.toHaveProperty("context");
    expect(call.subject).toBe(SUB);
  });

  it("records a subject token for another audience", async () => {
    await refusedWith({}, await subjectToken({ audience: AUDIENCE }), {}, "invalid_request");
  });

  it("records a scope escalation", async () => {
    await refusedWith({}, await subjectToken(), { scope: "write:repos/acme/api" }, "invalid_scope");
  });

  it("records a subject token of another agent than the client", async () => {
    const other = custodyClaim({
      taskUid: "uid-plan",
      policyVersion: "p",
      chain: CHAIN.slice(0, 2),
      spiffeIdOf: () => PARENT,
    });
    await refusedWith(
      {},
      await subjectToken({ spiffeId: PARENT, custody: other }),
      {},
      "invalid_client",
      401,
    );
  });

  it("records a revoked task", async () => {
    // Only the task is revoked; its parent is Issued.
    const { response } = await refusedWith(
      { getTask: (k) => (k === "team-a/review-42" ? task({ spec: { revoked: true } }) : parentTask()) },
      await subjectToken(),
      {},
      "invalid_request",
    );
    expect(String(bodyOf(response).error_description)).toMatch(/its task is revoked/);
  });

  it("records a task that no longer exists or belongs to another agent", async () => {
    await refusedWith({ getTask: () => undefined }, await subjectToken(), {}, "invalid_request");
    await refusedWith(
      { getTask: () => task({ spec: { agent: { name: "impostor" } } }) },
      await subjectToken(),
      {},
      "invalid_request",
    );
  });

  it("records a client certificate that is no longer the task's", async () => {
    const renewed = task({
      status: {
        certificate: { ...task().status!.certificate!, serial: "0abc", previousSerial: undefined },
      },
    });
    await refusedWith({ getTask: () => renewed }, await subjectToken(), {}, "invalid_client", 401);
  });

  it("refuses the certificate a narrowing policy superseded, and accepts it while it is merely renewed-away", async () => {
    const replaced = (superseded: boolean) =>
      task({
        status: {
          certificate: {
            ...task().status!.certificate!,
            serial: "0abc",
            previousSerial: minted.serialHex,
            previousNotAfter: new Date(NOW + HOUR).toISOString(),
            ...(superseded ? { previousSuperseded: true } : {}),
          },
        },
      });
    await refusedWith(
      { getTask: (k) => (k === "team-a/review-42" ? replaced(true) : parentTask()) },
      await subjectToken(),
      {},
      "invalid_client",
      401,
    );
    const renewedAway = setup({
      getTask: (k) => (k === "team-a/review-42" ? replaced(false) : parentTask()),
    });
    const r = await renewedAway.handler(tokenRequest(form(await subjectToken())));
    expect(r.status, r.body).toBe(200);
  });

  it("looks the task up by the namespace and name of sub", async () => {
    const s = setup();
    await s.handler(tokenRequest(form(await subjectToken())));
    // The task first, then each agent above it in the token's chain.
    expect(s.taskLookups).toEqual(["team-a/review-42", "team-a/plan-1"]);
  });

  it("answers even when a refusal cannot be recorded", async () => {
    const rec = fakeRecorder(() => Promise.reject(new Error("kafka down")));
    const { handler, logLines } = setup({ recorder: rec.open });
    const r = await handler(tokenRequest(form(await subjectToken(), { audience: "https://evil.example" })));
    expect(r.status).toBe(400);
    expect(bodyOf(r).error).toBe("invalid_target");
    expect(logLines.join("")).toContain("refusal not recorded");
  });

  it("rate-limits refusals of unauthenticated callers and counts the dropped ones", async () => {
    const { handler, calls, clock } = setup({ anonymousRefusalsPerSecond: 3 });
    const anonymous = tokenRequest(form("x.y.z"), { peer: undefined });
    for (let i = 0; i < 5; i++) expect((await handler(anonymous)).status).toBe(401);
    expect(calls).toHaveLength(3);
    expect(handler.dropped()).toBe(2);

    // An authenticated caller's refusal is always recorded.
    await handler(tokenRequest(form("x.y.z")));
    expect(calls).toHaveLength(4);
    expect(calls[3]!.data.client).toEqual({ spiffeId: SUB, serial: minted.serialHex });
    expect(handler.dropped()).toBe(2);

    // A third of a second refills one token.
    clock.t += 334;
    await handler(anonymous);
    await handler(anonymous);
    expect(calls).toHaveLength(5);
    expect(handler.dropped()).toBe(3);

    // After a long pause, no more than the per-second budget.
    clock.t += 60_000;
    for (let i = 0; i < 5; i++) await handler(anonymous);
    expect(calls).toHaveLength(8);
    expect(handler.dropped()).toBe(5);
  });
});

describe("token exchange under a revoked ancestor", () => {
  it("refuses as soon as an agent above the task is revoked, before the cascade reaches it", async () => {
    const revokedParent = {
      ...task({ spec: { revoked: true } }),
      metadata: { name: "plan-1", namespace: "team-a", uid: "uid-plan" },
    } as AgentTask;
    const current = task();
    const { handler, calls } = setup({
      getTask: (k) =>
        k === "team-a/plan-1" ? revokedParent : k === "team-a/review-42" ? current : undefined,
    });
    const r = await handler(tokenRequest(form(await subjectToken())));
    expect(r.status).toBe(400);
    expect(bodyOf(r)).toMatchObject({ error: "invalid_request" });
    expect(String(bodyOf(r).error_description)).toContain("ancestor plan-1 is revoked");
    expect(calls.map((c) => c.type)).toEqual(["dev.custody.task.token.refused"]);
  });
});

/** The agent above review-42 in its chain, Issued. */
function parentTask(): AgentTask {
  return { ...task(), metadata: { name: "plan-1", namespace: "team-a", uid: "uid-plan" } } as AgentTask;
}
