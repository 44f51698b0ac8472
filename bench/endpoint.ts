// What the identity-endpoint benches (jwt.ts, policy.ts) share: the agent's
// X.509-SVID, the provenance recorder (Kafka from `make up`, or in memory),
// the real endpoint in this process and an open-loop HTTPS + mTLS client.
import { randomBytes, randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { Agent, request } from "node:https";
import { connect } from "node:net";
import { join } from "node:path";
import { Kafka, logLevel } from "kafkajs";
import type { AgentTask, ChainLink } from "../core/api/v1alpha1.ts";
import { chainDigest } from "../core/delegation.ts";
import type { JwtKey } from "../core/jwt/keys.ts";
import { createStreamWriter } from "../core/provenance/chain.ts";
import { createEs256Signer } from "../core/provenance/sign.ts";
import { buildTaskSpiffeId } from "../core/spiffe.ts";
import {
  type CertificateAuthority,
  generateCa,
  generateLeafKeyPair,
  type LeafKeyPair,
  type MintedSvid,
  mintSvid,
  serialFromRandom,
} from "../core/x509/index.ts";
import {
  type IdentityEndpoint,
  type StartIdentityEndpointOptions,
  startIdentityEndpoint,
} from "../operator/identity-endpoint.ts";
import { generateJwtKey } from "../operator/jwt-keys.ts";
import { createKafkaRecorder, type ProvenanceRecorder } from "../operator/provenance.ts";
import type { Logger } from "../shells/log.ts";
import { envDir, localEnv } from "./local.ts";

/** The trust domain and issuer the endpoint runs under in both benches (the in-cluster Service name). */
export const TRUST_DOMAIN = "custody.local";
export const ISSUER = "https://custody-identity.custody-system.svc";

/** Whole numbers with thousands separators, as every bench row prints them. */
export const fmt = (n: number) => Math.round(n).toLocaleString("en-US");

/**
 * kafkajs arms negative timers (the operator runs with --disable-warning=TimeoutNegativeWarning,
 * which run.ts does not pass): drop that one warning, print any other.
 */
export function dropTimeoutNegativeWarnings(): void {
  process.removeAllListeners("warning");
  process.on("warning", (w) => {
    if (w.name !== "TimeoutNegativeWarning") console.error(`warning: ${w.name}: ${w.message}`);
  });
}

/** The chain a bench task hangs from, root first: the human, the orchestrator's task, then task t1. */
export function benchChain(taskUid: string, scope: string[]): ChainLink[] {
  return [
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
    { kind: "AgentTask", name: "t1", uid: taskUid, scope },
  ];
}

/**
 * The orchestrator's task above t1 in benchChain, Issued: both endpoints refuse a task whose
 * ancestor is gone or revoked, so getTask must find it as the operator's cache would.
 */
export function ancestorTask(chain: ChainLink[], o: { namespace: string; audiences: string[] }): AgentTask {
  const link = chain[1]!;
  return {
    apiVersion: "custody.dev/v1alpha1",
    kind: "AgentTask",
    metadata: { name: link.name, namespace: o.namespace, uid: link.uid },
    spec: {
      agent: { name: "orchestrator" },
      scope: link.scope ?? [],
      audiences: o.audiences,
      ttl: "1h",
      serviceAccountName: "bench",
    },
    status: {
      phase: "Issued",
      spiffeID: buildTaskSpiffeId({
        trustDomain: TRUST_DOMAIN,
        namespace: o.namespace,
        agent: "orchestrator",
        task: link.name,
      }),
    },
  };
}

type TaskCertificate = NonNullable<NonNullable<AgentTask["status"]>["certificate"]>;

export interface AgentSvid {
  ca: CertificateAuthority;
  leaf: LeafKeyPair;
  svid: MintedSvid;
  /** What the task's status records of it: the endpoint checks the client's serial against it. */
  certificate: TaskCertificate;
}

/** A fresh CA and the agent's X.509-SVID (valid 1 h) under it: the client certificate of every request. */
export function mintAgentSvid(o: {
  spiffeId: string;
  taskUid: string;
  chain: ChainLink[];
  scope: string[];
  now: number;
}): AgentSvid {
  const ca = generateCa({
    trustDomain: TRUST_DOMAIN,
    now: new Date(o.now - 60_000),
    validityMs: 30 * 86_400_000, // past the 24 h serving certificate, so it is not clamped
    serial: serialFromRandom(randomBytes(16)),
  }).ca;
  const leaf = generateLeafKeyPair();
  const notBefore = new Date(o.now - 60_000);
  const notAfter = new Date(o.now + 3_600_000);
  const svid = mintSvid({
    ca,
    spiffeId: o.spiffeId,
    subjectPublicKey: leaf.publicKeySpki,
    serial: serialFromRandom(randomBytes(16)),
    notBefore,
    notAfter,
    delegation: {
      taskUid: o.taskUid,
      delegator: { kind: "user", name: "alice@example.com", uid: "u-1234" },
      scope: o.scope,
      chainDigest: chainDigest(o.chain),
      chainDepth: o.chain.length - 1,
      policyVersion: "policy-7",
      specDigest: randomBytes(32),
    },
  });
  const certificate: TaskCertificate = {
    serial: svid.serialHex,
    notBefore: notBefore.toISOString(),
    notAfter: notAfter.toISOString(),
    renewalTime: new Date(o.now + 2_400_000).toISOString(),
    publicKeySHA256: svid.publicKeySHA256,
    secretName: "t1-svid",
  };
  return { ca, leaf, svid, certificate };
}

/** The same hash-chained, signed stream as the Kafka recorder, acknowledged at once. */
function memoryRecorder(now: number): ProvenanceRecorder {
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

/** A bench's topic is its own: deleted after the run so `make up` does not collect them. */
async function deleteTopic(clientId: string, brokers: string[], topic: string): Promise<void> {
  const admin = new Kafka({ clientId, brokers, logLevel: logLevel.NOTHING }).admin();
  await admin.connect();
  await admin.deleteTopics({ topics: [topic] }).catch(() => undefined);
  await admin.disconnect();
}

export interface BenchRecorder {
  recorder: ProvenanceRecorder;
  /** What the reader should know about it. */
  label: string;
  cleanup: () => Promise<void>;
}

/**
 * Kafka from `make up` when it answers (so each answer waits for its event's acknowledgement, as in
 * the operator); otherwise the in-memory stand-in, labelled so the output cannot pass for the real number.
 */
export async function openRecorder(o: {
  /** Names the topic (custody.bench.<bench>.…) and the admin client. */
  bench: string;
  /** What a real request waits for the acknowledgement of ("exchange", "decision"). */
  waitsFor: string;
  now: number;
  log: Logger;
}): Promise<BenchRecorder> {
  const fallback = (why: string): BenchRecorder => ({
    recorder: memoryRecorder(o.now),
    label:
      `IN-MEMORY recorder (${why}): events are chained and signed but NOT sent to Kafka, ` +
      `so these latencies leave out the acknowledgement a real ${o.waitsFor} waits for. Run \`make up\` for the real number.`,
    cleanup: async () => undefined,
  });
  if (!existsSync(join(envDir, "env.json"))) return fallback(`no local environment at ${envDir}`);
  const brokers = localEnv().kafkaBrokers.split(",");
  if (!(await reachable(brokers[0]!, 1_500))) return fallback(`Kafka at ${brokers[0]} is unreachable`);
  const topic = `custody.bench.${o.bench}.${randomBytes(4).toString("hex")}`;
  try {
    const recorder = await Promise.race([
      createKafkaRecorder({
        brokers,
        topic,
        partitions: 1,
        replicationFactor: 1,
        writer: `bench-${randomBytes(3).toString("hex")}-token-endpoint`,
        epoch: 0,
        signingKey: generateJwtKey("ES256", o.now, o.now).privateKey,
        log: o.log.child("provenance"),
      }),
      new Promise<never>((_, reject) =>
        setTimeout(() => reject(new Error("no topic within 20 s")), 20_000).unref(),
      ),
    ]);
    return {
      recorder,
      label: `Kafka recorder (acks=all, idempotent) on ${brokers.join(",")}, topic ${topic}, 1 partition`,
      cleanup: () => deleteTopic(`custody-bench-${o.bench}`, brokers, topic),
    };
  } catch (err) {
    return fallback(`Kafka recorder failed: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** The real identity endpoint on a free local port, trusting only the bench CA and signing with one key. */
export function startBenchEndpoint(o: {
  ca: CertificateAuthority;
  key: JwtKey;
  getTask: (key: string) => AgentTask | undefined;
  recorder: ProvenanceRecorder;
  authzen?: StartIdentityEndpointOptions["authzen"];
  log: Logger;
}): Promise<IdentityEndpoint> {
  return startIdentityEndpoint({
    addr: { host: "127.0.0.1", port: 0 },
    issuer: ISSUER,
    trustDomain: TRUST_DOMAIN,
    service: { name: "custody-identity", namespace: "custody-system" },
    dnsNames: [],
    ca: () => o.ca,
    trustAnchorsPem: o.ca.bundlePem,
    trustAnchorsDer: () => o.ca.bundleDer,
    keys: { published: () => [o.key], signing: () => o.key },
    getTask: o.getTask,
    jwksMaxAgeSeconds: 60,
    ...(o.authzen ? { authzen: o.authzen } : {}),
    openRecorder: async () => o.recorder,
    log: o.log.child("identity"),
  });
}

/** Keep-alive client presenting the agent's SVID: the run times requests, not TLS handshakes. */
export function mtlsAgent({ ca, leaf, svid }: AgentSvid): Agent {
  return new Agent({ keepAlive: true, cert: svid.chainPem, key: leaf.privateKeyPem, ca: ca.certPem });
}

export interface Reply {
  /** 0 when no answer came (the error's message is the text). */
  status: number;
  text: string;
  /** When the answer completed (performance.now()). */
  at: number;
}

/** One POST to the local endpoint over the agent, its answer read to the last byte. */
export function post(agent: Agent, port: number, path: string, contentType: string, body: string) {
  return new Promise<Reply>((resolve) => {
    const done = (status: number, text: string) => resolve({ status, text, at: performance.now() });
    const req = request(
      {
        agent,
        host: "127.0.0.1",
        port,
        method: "POST",
        path,
        headers: { "content-type": contentType, "content-length": Buffer.byteLength(body) },
        timeout: 30_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => done(res.statusCode ?? 0, Buffer.concat(chunks).toString("utf8")));
        res.on("error", (err) => done(0, err.message));
      },
    );
    req.on("timeout", () => req.destroy(new Error("no answer within 30 s")));
    req.on("error", (err) => done(0, err.message));
    req.end(body);
  });
}

/** Both endpoints refuse with an OAuth-style `{error, error_description}` body; anything else is cut short. */
export function errorDetail(text: string): string {
  try {
    const e = JSON.parse(text) as Record<string, string>;
    return `${e.error}: ${e.error_description}`;
  } catch {
    return text.slice(0, 200);
  }
}

/**
 * Open loop: request i leaves at start + i/rate whether or not earlier ones were answered,
 * so a slow answer shows as latency instead of slowing the offered rate.
 */
export async function openLoop<A>(
  rate: number,
  count: number,
  send: (due: number, i: number) => Promise<A>,
): Promise<{ answers: A[]; start: number; sentIn: number }> {
  const answers: Promise<A>[] = [];
  const start = performance.now();
  const dueOf = (i: number) => start + (i * 1000) / rate;
  for (let i = 0; i < count; ) {
    while (i < count && dueOf(i) <= performance.now()) {
      answers.push(send(dueOf(i), i));
      i++;
    }
    if (i < count) await new Promise((r) => setTimeout(r, Math.max(0, dueOf(i) - performance.now())));
  }
  const sentIn = (performance.now() - start) / 1000;
  return { answers: await Promise.all(answers), start, sentIn };
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

/** `p50 … ms  p99 … ms  max … ms` of ascending milliseconds: one format for every latency row. */
export function percentiles(sorted: number[]): string {
  return (
    `p50 ${percentile(sorted, 50).toFixed(1)} ms  p99 ${percentile(sorted, 99).toFixed(1)} ms  ` +
    `max ${(sorted[sorted.length - 1] ?? Number.NaN).toFixed(1)} ms`
  );
}

/** The lines before the run starts that say what is being measured against what. */
export function printSetup(recorderLabel: string): void {
  console.log("   Client and endpoint share one Node process (one event loop) on this machine.");
  console.log(`   Recorder: ${recorderLabel}`);
}

/** An answer as both benches time it. */
export interface Timed {
  status: number;
  /** From the scheduled send time to the last byte of the answer. */
  ms: number;
  /** When the answer completed (performance.now()). */
  at: number;
  detail: string;
}

/**
 * Prints the offered and achieved rates and the latency of the 200 answers (the two rows both
 * benches lead with); returns those answers and the others counted by status and detail.
 */
export function printRun<A extends Timed>(run: {
  answers: A[];
  count: number;
  start: number;
  sentIn: number;
}): { ok: A[]; errors: Map<string, number> } {
  const { answers, count, start, sentIn } = run;
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
  console.log(`   latency ${percentiles(latencies)}`);
  return { ok, errors };
}

/** The closing rows: each kind of non-200 answer, and how many connections the keep-alive agent opened. */
export function printErrorsAndSockets(errors: Map<string, number>, agent: Agent): void {
  for (const [k, n] of errors) console.log(`     ${fmt(n)} × ${k}`);
  console.log(
    `   open TLS connections used: ${Object.values(agent.sockets).flat().length + Object.values(agent.freeSockets).flat().length}`,
  );
}
