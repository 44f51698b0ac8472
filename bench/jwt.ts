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
import { randomBytes, randomUUID, sign, verify } from "node:crypto";
import { existsSync } from "node:fs";
import { Agent, request } from "node:https";
import { connect } from "node:net";
import { join } from "node:path";
import { jwtVerify } from "jose";
import { Kafka, logLevel } from "kafkajs";
import type { AgentTask, ChainLink } from "../core/api/v1alpha1.ts";
import { chainDigest } from "../core/delegation.ts";
import { TOKEN_PATH } from "../core/jwt/discovery.ts";
import { JWT_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT, verifySubjectToken } from "../core/jwt/exchange.ts";
import { custodyClaim, signJwtSvid } from "../core/jwt/svid.ts";
import { createStreamWriter } from "../core/provenance/chain.ts";
import { createEs256Signer } from "../core/provenance/sign.ts";
import { buildTaskSpiffeId } from "../core/spiffe.ts";
import { generateCa, generateLeafKeyPair, mintSvid, serialFromRandom } from "../core/x509/index.ts";
import { startIdentityEndpoint } from "../operator/identity-endpoint.ts";
import { generateJwtKey } from "../operator/jwt-keys.ts";
import { createKafkaRecorder, type ProvenanceRecorder } from "../operator/provenance.ts";
import { createLogger } from "../shells/log.ts";
import { benchFlags, envDir, localEnv } from "./local.ts";

const flag = benchFlags();
const SIGN_SECONDS = flag("sign-seconds", 3);
const RATE = flag("rate", 200);
const SECONDS = flag("seconds", 10);

const fmt = (n: number) => Math.round(n).toLocaleString("en-US");
const TRUST_DOMAIN = "custody.local";
const ISSUER = "https://custody-identity.custody-system.svc";
const AUDIENCE = "https://api.example";
const SCOPE = ["read:repos/acme/*"];
const log = createLogger({ name: "bench-jwt", level: "warn" });
// kafkajs arms negative timers (the operator runs with --disable-warning=TimeoutNegativeWarning,
// which run.ts does not pass): drop that one warning, print any other.
process.removeAllListeners("warning");
process.on("warning", (w) => {
  if (w.name !== "TimeoutNegativeWarning") console.error(`warning: ${w.name}: ${w.message}`);
});

// ---------------------------------------------------------------- fixtures

const now = Date.now();
const key = generateJwtKey("ES256", now, now);
const spiffeOf = (agent: string, task: string) =>
  buildTaskSpiffeId({ trustDomain: TRUST_DOMAIN, namespace: "bench", agent, task });
const spiffeId = spiffeOf("planner", "t1");
const taskUid = randomUUID();
// Root first: the human, the orchestrator's task, then this task.
const chain: ChainLink[] = [
  {
    kind: "User",
    name: "alice@example.com",
    uid: "u-1234",
    scope: ["read:repos/acme/*", "write:repos/acme/*"],
  },
  {
    kind: "AgentTask",
    name: "orchestrate",
    uid: randomUUID(),
    scope: ["read:repos/acme/*", "write:repos/acme/docs"],
  },
  { kind: "AgentTask", name: "t1", uid: taskUid, scope: SCOPE },
];
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

/** The same hash-chained, signed stream as the Kafka recorder, acknowledged at once. */
function memoryRecorder(): ProvenanceRecorder {
  const writer = createStreamWriter({
    stream: "operator/bench-token-endpoint",
    epoch: 0,
    signer: createEs256Signer(generateJwtKey("ES256", now, now).privateKey),
  });
  return {
    record: async (type, subject, data, _rootUid, id) => {
      writer.append({
        id: id ?? randomUUID(),
        source: "custody.dev/operator/bench",
        type,
        subject,
        time: new Date().toISOString(),
        data,
      } as never);
    },
    healthy: true,
    backlog: 0,
    close: async () => undefined,
  };
}

function reachable(hostPort: string, timeoutMs: number): Promise<boolean> {
  const i = hostPort.lastIndexOf(":");
  return new Promise((resolve) => {
    const socket = connect({ host: hostPort.slice(0, i), port: Number(hostPort.slice(i + 1)) });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}

interface Recorder {
  recorder: ProvenanceRecorder;
  /** What the reader should know about it. */
  label: string;
  cleanup: () => Promise<void>;
}

async function openRecorder(): Promise<Recorder> {
  const fallback = (why: string): Recorder => ({
    recorder: memoryRecorder(),
    label:
      `IN-MEMORY recorder (${why}): events are chained and signed but NOT sent to Kafka, ` +
      "so these latencies leave out the acknowledgement a real exchange waits for. Run `make up` for the real number.",
    cleanup: async () => undefined,
  });
  if (!existsSync(join(envDir, "env.json"))) return fallback(`no local environment at ${envDir}`);
  const brokers = localEnv().kafkaBrokers.split(",");
  if (!(await reachable(brokers[0]!, 1_500))) return fallback(`Kafka at ${brokers[0]} is unreachable`);
  const topic = `custody.bench.jwt.${randomBytes(4).toString("hex")}`;
  try {
    const recorder = await Promise.race([
      createKafkaRecorder({
        brokers,
        topic,
        partitions: 1,
        replicationFactor: 1,
        writer: `bench-${randomBytes(3).toString("hex")}-token-endpoint`,
        epoch: 0,
        signingKey: generateJwtKey("ES256", now, now).privateKey,
        log: log.child("provenance"),
      }),
      new Promise<never>((_, reject) =>
        setTimeout(() => reject(new Error("no topic within 20 s")), 20_000).unref(),
      ),
    ]);
    return {
      recorder,
      label: `Kafka recorder (acks=all, idempotent) on ${brokers.join(",")}, topic ${topic}, 1 partition`,
      cleanup: async () => {
        const admin = new Kafka({
          clientId: "custody-bench-jwt",
          brokers,
          logLevel: logLevel.NOTHING,
        }).admin();
        await admin.connect();
        await admin.deleteTopics({ topics: [topic] }).catch(() => undefined);
        await admin.disconnect();
      },
    };
  } catch (err) {
    return fallback(`Kafka recorder failed: ${err instanceof Error ? err.message : String(err)}`);
  }
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

interface Answer {
  status: number;
  /** From the scheduled send time to the last byte of the answer. */
  ms: number;
  /** When the answer completed (performance.now()). */
  at: number;
  detail: string;
}

async function exchange(): Promise<void> {
  const ca = generateCa({
    trustDomain: TRUST_DOMAIN,
    now: new Date(now - 60_000),
    validityMs: 30 * 86_400_000, // past the 24 h serving certificate, so it is not clamped
    serial: serialFromRandom(randomBytes(16)),
  }).ca;
  const leaf = generateLeafKeyPair();
  const notBefore = new Date(now - 60_000);
  const notAfter = new Date(now + 3_600_000);
  const svid = mintSvid({
    ca,
    spiffeId,
    subjectPublicKey: leaf.publicKeySpki,
    serial: serialFromRandom(randomBytes(16)),
    notBefore,
    notAfter,
    delegation: {
      taskUid,
      delegator: { kind: "user", name: "alice@example.com", uid: "u-1234" },
      scope: SCOPE,
      chainDigest: chainDigest(chain),
      chainDepth: chain.length - 1,
      policyVersion: "policy-7",
      specDigest: randomBytes(32),
    },
  });
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
      certificate: {
        serial: svid.serialHex,
        notBefore: notBefore.toISOString(),
        notAfter: notAfter.toISOString(),
        renewalTime: new Date(now + 2_400_000).toISOString(),
        publicKeySHA256: svid.publicKeySHA256,
        secretName: "t1-svid",
      },
    },
  };
  const { recorder, label, cleanup } = await openRecorder();
  const endpoint = await startIdentityEndpoint({
    addr: { host: "127.0.0.1", port: 0 },
    issuer: ISSUER,
    trustDomain: TRUST_DOMAIN,
    service: { name: "custody-identity", namespace: "custody-system" },
    dnsNames: [],
    ca: () => ca,
    trustAnchorsPem: ca.bundlePem,
    trustAnchorsDer: () => ca.bundleDer,
    keys: { published: () => [key], signing: () => key },
    getTask: (k) => (k === "bench/t1" ? task : undefined),
    jwksMaxAgeSeconds: 60,
    openRecorder: async () => recorder,
    log: log.child("identity"),
  });
  const agent = new Agent({ keepAlive: true, cert: svid.chainPem, key: leaf.privateKeyPem, ca: ca.certPem });
  const subjectToken = await signJwtSvid(key, svidInput(ISSUER, 1));
  const body = new URLSearchParams({
    grant_type: TOKEN_EXCHANGE_GRANT,
    subject_token: subjectToken,
    subject_token_type: JWT_TOKEN_TYPE,
    audience: AUDIENCE,
    scope: SCOPE.join(" "),
  }).toString();

  const send = (due: number) =>
    new Promise<Answer>((resolve) => {
      const done = (status: number, detail: string) => {
        const at = performance.now();
        resolve({ status, ms: at - due, at, detail });
      };
      const req = request(
        {
          agent,
          host: "127.0.0.1",
          port: endpoint.port,
          method: "POST",
          path: TOKEN_PATH,
          headers: {
            "content-type": "application/x-www-form-urlencoded",
            "content-length": Buffer.byteLength(body),
          },
          timeout: 30_000,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => {
            const status = res.statusCode ?? 0;
            let detail = "";
            if (status !== 200) {
              try {
                const e = JSON.parse(Buffer.concat(chunks).toString("utf8")) as Record<string, string>;
                detail = `${e.error}: ${e.error_description}`;
              } catch {
                detail = Buffer.concat(chunks).toString("utf8").slice(0, 200);
              }
            }
            done(status, detail);
          });
          res.on("error", (err) => done(0, err.message));
        },
      );
      req.on("timeout", () => req.destroy(new Error("no answer within 30 s")));
      req.on("error", (err) => done(0, err.message));
      req.end(body);
    });

  /** Open loop: request i leaves at start + i/rate whether or not earlier ones were answered. */
  const openLoop = async (rate: number, count: number) => {
    const answers: Promise<Answer>[] = [];
    const start = performance.now();
    const dueOf = (i: number) => start + (i * 1000) / rate;
    for (let i = 0; i < count; ) {
      while (i < count && dueOf(i) <= performance.now()) answers.push(send(dueOf(i++)));
      if (i < count) await new Promise((r) => setTimeout(r, Math.max(0, dueOf(i) - performance.now())));
    }
    const sentIn = (performance.now() - start) / 1000;
    return { answers: await Promise.all(answers), start, sentIn };
  };

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
    console.log("   Client and endpoint share one Node process (one event loop) on this machine.");
    console.log(`   Recorder: ${label}`);
    await openLoop(RATE, Math.max(50, Math.round(RATE))); // 1 s warm-up: connections, JIT, producer
    const count = Math.round(RATE * SECONDS);
    const { answers, start, sentIn } = await openLoop(RATE, count);
    const ok = answers.filter((a) => a.status === 200);
    const latencies = ok.map((a) => a.ms).sort((a, b) => a - b);
    const lastAt = Math.max(...answers.map((a) => a.at));
    const errors = new Map<string, number>();
    for (const a of answers)
      if (a.status !== 200) {
        const k = `${a.status || "no answer"} ${a.detail}`;
        errors.set(k, (errors.get(k) ?? 0) + 1);
      }
    console.log(
      `   sent ${fmt(count)} in ${sentIn.toFixed(2)} s (${fmt(count / sentIn)}/s offered); ` +
        `${fmt(ok.length)} answered 200 by ${((lastAt - start) / 1000).toFixed(2)} s ` +
        `(${fmt(ok.length / ((lastAt - start) / 1000))}/s achieved)`,
    );
    console.log(
      `   latency p50 ${percentile(latencies, 50).toFixed(1)} ms  p99 ${percentile(latencies, 99).toFixed(1)} ms  ` +
        `max ${(latencies[latencies.length - 1] ?? Number.NaN).toFixed(1)} ms`,
    );
    console.log(`   errors (non-200): ${fmt(count - ok.length)}`);
    for (const [k, n] of errors) console.log(`     ${fmt(n)} × ${k}`);
    console.log(
      `   open TLS connections used: ${Object.values(agent.sockets).flat().length + Object.values(agent.freeSockets).flat().length}`,
    );
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
