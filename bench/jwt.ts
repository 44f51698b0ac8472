/**
 * JWT-SVIDs and token exchange: `node bench/jwt.ts [--sign-seconds 3] [--rate 200] [--seconds 10]`.
 *
 * 1. Signing on one core: signJwtSvid (jose) one token at a time, with a
 *    3-link custody claim, beside node:crypto ES256 over the same signing
 *    input (what jose costs on top), and jose jwtVerify / verifySubjectToken.
 * 2. Token exchange (RFC 8693) over HTTPS with mutual TLS: the real identity
 *    endpoint (startIdentityEndpoint) in this process, an agent's X.509-SVID as
 *    the client certificate and its JWT-SVID as the subject token, requests
 *    sent open-loop at a fixed rate; prints p50/p99 latency and the achieved
 *    rate. With `make up` running, every exchange waits for its provenance
 *    event's Kafka acknowledgement (as in the operator); without it an
 *    in-memory recorder stands in, and the output says so.
 * Prints numbers only; never asserts a timing.
 */
import { randomUUID, sign, verify } from "node:crypto";
import { jwtVerify } from "jose";
import type { AgentTask } from "../core/api/v1alpha1.ts";
import { TOKEN_PATH } from "../core/jwt/discovery.ts";
import { JWT_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT, verifySubjectToken } from "../core/jwt/exchange.ts";
import { custodyClaim, signJwtSvid } from "../core/jwt/svid.ts";
import { buildTaskSpiffeId } from "../core/spiffe.ts";
import { generateJwtKey } from "../operator/jwt-keys.ts";
import { createLogger } from "../shells/log.ts";
import {
  ancestorTask,
  benchChain,
  dropTimeoutNegativeWarnings,
  errorDetail,
  fmt,
  ISSUER,
  mintAgentSvid,
  mtlsAgent,
  openLoop,
  openRecorder,
  post,
  printErrorsAndSockets,
  printRun,
  printSetup,
  startBenchEndpoint,
  type Timed,
  TRUST_DOMAIN,
} from "./endpoint.ts";
import { benchFlags } from "./local.ts";

const flag = benchFlags();
const SIGN_SECONDS = flag("sign-seconds", 3);
const RATE = flag("rate", 200);
const SECONDS = flag("seconds", 10);

const AUDIENCE = "https://api.example";
const SCOPE = ["read:repos/acme/*"];
const log = createLogger({ name: "bench-jwt", level: "warn" });
dropTimeoutNegativeWarnings();

// ---------------------------------------------------------------- fixtures

const now = Date.now();
const key = generateJwtKey("ES256", now, now);
const spiffeOf = (agent: string, task: string) =>
  buildTaskSpiffeId({ trustDomain: TRUST_DOMAIN, namespace: "bench", agent, task });
const spiffeId = spiffeOf("planner", "t1");
const taskUid = randomUUID();
const chain = benchChain(taskUid, SCOPE);
const custody = custodyClaim({
  taskUid,
  policyVersion: "policy-7",
  chain,
  spiffeIdOf: (name) => (name === "t1" ? spiffeId : spiffeOf("orchestrator", name)),
});
const svidInput = (audience: string, i: number) => ({
  issuer: ISSUER,
  spiffeId,
  audience,
  issuedAt: now,
  expiresAt: now + 5 * 60_000,
  jti: `bench-${i}`,
  custody,
});

// ---------------------------------------------------------------- 1. signing

async function rate(name: string, op: (i: number) => unknown): Promise<number> {
  for (let i = 0; i < 300; i++) await op(i); // warm-up (JIT, jose's CryptoKey cache)
  let n = 0;
  const start = process.hrtime.bigint();
  const budget = BigInt(Math.round(SIGN_SECONDS * 1e9));
  let elapsed = 0n;
  while (elapsed < budget) {
    for (let i = 0; i < 50; i++) await op(n++);
    elapsed = process.hrtime.bigint() - start;
  }
  const perSecond = n / (Number(elapsed) / 1e9);
  console.log(`  ${name.padEnd(58)} ${fmt(perSecond).padStart(8)} /s`);
  return perSecond;
}

async function signing(): Promise<void> {
  const sample = await signJwtSvid(key, svidInput(AUDIENCE, 0));
  const [h, p, s] = sample.split(".") as [string, string, string];
  const signingInput = Buffer.from(`${h}.${p}`, "ascii");
  const signature = Buffer.from(s, "base64url");
  const subjectToken = await signJwtSvid(key, svidInput(ISSUER, 0));
  console.log(
    `1. JWT-SVID signing, one token at a time (one core; jose signs through WebCrypto, so each of its ` +
      `operations also hops to libuv's thread pool and back), ${SIGN_SECONDS} s per row after warm-up.`,
  );
  console.log(
    `   Token: ES256, 3-link custody chain, ${sample.length} bytes (signing input ${signingInput.length} bytes).`,
  );
  const raw = await rate("node:crypto ES256 sign of the same signing input", () =>
    sign("sha256", signingInput, { key: key.privateKey, dsaEncoding: "ieee-p1363" }),
  );
  const jose = await rate("signJwtSvid (jose SignJWT: claims, JSON, base64url, sign)", (i) =>
    signJwtSvid(key, svidInput(AUDIENCE, i)),
  );
  await rate("node:crypto ES256 verify of the same signing input", () =>
    verify("sha256", signingInput, { key: key.publicKey, dsaEncoding: "ieee-p1363" }, signature),
  );
  const opts = { issuer: ISSUER, audience: AUDIENCE, algorithms: ["ES256"], typ: "JWT" };
  await rate("jose jwtVerify (signature + iss/aud/exp/typ)", () => jwtVerify(sample, key.publicKey, opts));
  await rate("verifySubjectToken (jwtVerify + custody claim schema)", () =>
    verifySubjectToken(subjectToken, {
      issuer: ISSUER,
      keyFor: (kid) => (kid === key.kid ? key : undefined),
      algorithms: ["ES256"],
      now: Date.now(),
    }),
  );
  console.log(
    `   jose's overhead over the raw signature: ${((raw / jose - 1) * 100).toFixed(0)}% ` +
      `(${(1e6 / jose).toFixed(1)} µs vs ${(1e6 / raw).toFixed(1)} µs per token)`,
  );
}

// ---------------------------------------------------------------- 2. exchange

async function exchange(): Promise<void> {
  const minted = mintAgentSvid({ spiffeId, taskUid, chain, scope: SCOPE, now });
  const task: AgentTask = {
    apiVersion: "custody.dev/v1alpha1",
    kind: "AgentTask",
    metadata: { name: "t1", namespace: "bench", uid: taskUid },
    spec: {
      agent: { name: "planner" },
      scope: SCOPE,
      audiences: [AUDIENCE],
      ttl: "1h",
      serviceAccountName: "bench",
    },
    status: {
      phase: "Issued",
      spiffeID: spiffeId,
      delegationChain: chain,
      policyVersion: "policy-7",
      certificate: minted.certificate,
    },
  };
  const ancestor = ancestorTask(chain, { namespace: "bench", audiences: [AUDIENCE] });
  const tasks = new Map([
    ["bench/t1", task],
    [`bench/${ancestor.metadata.name}`, ancestor],
  ]);
  const { recorder, label, cleanup } = await openRecorder({ bench: "jwt", waitsFor: "exchange", now, log });
  const endpoint = await startBenchEndpoint({
    ca: minted.ca,
    key,
    getTask: (k) => tasks.get(k),
    recorder,
    log,
  });
  const agent = mtlsAgent(minted);
  const subjectToken = await signJwtSvid(key, svidInput(ISSUER, 1));
  const body = new URLSearchParams({
    grant_type: TOKEN_EXCHANGE_GRANT,
    subject_token: subjectToken,
    subject_token_type: JWT_TOKEN_TYPE,
    audience: AUDIENCE,
    scope: SCOPE.join(" "),
  }).toString();

  const send = (due: number): Promise<Timed> =>
    post(agent, endpoint.port, TOKEN_PATH, "application/x-www-form-urlencoded", body).then(
      ({ status, text, at }) => ({
        status,
        ms: at - due,
        at,
        detail: status === 200 ? "" : status === 0 ? text : errorDetail(text),
      }),
    );

  try {
    const first = await send(performance.now());
    if (first.status !== 200)
      throw new Error(`the first exchange was refused: ${first.status} ${first.detail}`);
    console.log(
      `\n2. Token exchange over HTTPS + mutual TLS (keep-alive), the real identity endpoint in this process,` +
        ` open loop at ${fmt(RATE)} req/s for ${SECONDS} s.`,
    );
    console.log(
      "   Latency: from each request's scheduled send time to the last byte of its answer " +
        "(client mTLS, subject-token verify, task checks, OBO token sign, provenance record, response).",
    );
    printSetup(label);
    await openLoop(RATE, Math.max(50, Math.round(RATE)), send); // 1 s warm-up: connections, JIT, producer
    const count = Math.round(RATE * SECONDS);
    const { answers, start, sentIn } = await openLoop(RATE, count, send);
    const { ok, errors } = printRun({ answers, count, start, sentIn });
    console.log(`   errors (non-200): ${fmt(count - ok.length)}`);
    printErrorsAndSockets(errors, agent);
  } finally {
    agent.destroy();
    await endpoint.close();
    await cleanup().catch(() => undefined);
  }
}

async function main(): Promise<void> {
  console.log(`jwt bench: node ${process.version}, pid ${process.pid}`);
  await signing();
  await exchange();
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
