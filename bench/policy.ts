/**
 * Policy evaluation and the decision endpoint: `node bench/policy.ts [--eval-seconds 3] [--rate 500] [--seconds 10]`.
 *
 * 1. Evaluation on one core: a realistic AgentPolicy (5 rules: a retired
 *    model-version deny, a tool deny, a `when` guard on the delegator's groups
 *    narrowing with maxTtl and scopeCeiling, two action-stage rules on
 *    resource.id, action and context) compiled once with compilePolicy, then
 *    `decide` at stage issuance and at stage action, and `decideAction` (task
 *    state, scope check, action-stage policy) timed one call at a time. Also
 *    what compilePolicy costs per policy version (cold, then warm).
 * 2. The decision endpoint (OpenID AuthZEN Access Evaluation) over HTTPS with
 *    mutual TLS: the real identity endpoint (startIdentityEndpoint) with the
 *    AuthZEN handler in this process, the agent asking for itself with its
 *    X.509-SVID, requests sent open-loop at a fixed rate, ~20% of them denied
 *    (out of scope, or by policy); prints p50/p99 latency, the achieved rate
 *    and allow/deny counts. With `make up` running, every decision waits for
 *    its provenance event's Kafka acknowledgement (as in the operator);
 *    without it an in-memory recorder stands in, and the output says so.
 * Prints numbers only; never asserts a timing.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { Agent, request } from "node:https";
import { connect } from "node:net";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { Kafka, logLevel } from "kafkajs";
import type { AgentPolicy } from "../core/api/policy.ts";
import type { AgentTask, ChainLink } from "../core/api/v1alpha1.ts";
import { chainDigest } from "../core/delegation.ts";
import { type ActionRequest, decideAction, type TaskState } from "../core/policy/action.ts";
import { compilePolicy } from "../core/policy/compile.ts";
import type { PolicyFacts } from "../core/policy/context.ts";
import { type DecideOptions, decide } from "../core/policy/decide.ts";
import { createStreamWriter } from "../core/provenance/chain.ts";
import { createEs256Signer } from "../core/provenance/sign.ts";
import { buildTaskSpiffeId } from "../core/spiffe.ts";
import { generateCa, generateLeafKeyPair, mintSvid, serialFromRandom } from "../core/x509/index.ts";
import { createAuthzenHandler, EVALUATION_PATH } from "../operator/authzen.ts";
import { startIdentityEndpoint } from "../operator/identity-endpoint.ts";
import { generateJwtKey } from "../operator/jwt-keys.ts";
import { issuanceFacts, PolicyStore, selectionFacts } from "../operator/policies.ts";
import { createKafkaRecorder, type ProvenanceRecorder } from "../operator/provenance.ts";
import { createLogger } from "../shells/log.ts";
import { benchFlags, envDir, localEnv } from "./local.ts";

const flag = benchFlags();
const EVAL_SECONDS = flag("eval-seconds", 3);
const RATE = flag("rate", 500);
const SECONDS = flag("seconds", 10);

const fmt = (n: number) => Math.round(n).toLocaleString("en-US");
const TRUST_DOMAIN = "custody.local";
const ISSUER = "https://custody-identity.custody-system.svc";
const NAMESPACE = "bench";
const SCOPE = ["read:repos/acme/*", "write:repos/acme/docs"];
const log = createLogger({ name: "bench-policy", level: "warn" });
// kafkajs arms negative timers (the operator runs with --disable-warning=TimeoutNegativeWarning,
// which run.ts does not pass): drop that one warning, print any other.
process.removeAllListeners("warning");
process.on("warning", (w) => {
  if (w.name !== "TimeoutNegativeWarning") console.error(`warning: ${w.name}: ${w.message}`);
});

// ---------------------------------------------------------------- fixtures

const now = Date.now();

/** What a platform team would apply: one namespace's policy for its coding agents. */
const policy: AgentPolicy = {
  apiVersion: "custody.dev/v1alpha1",
  kind: "AgentPolicy",
  metadata: { name: "coding-agents", namespace: NAMESPACE, generation: 3 },
  spec: {
    selector: { agents: ["planner", "coder", "reviewer"] },
    rules: [
      {
        name: "retired-models",
        deny:
          "task.agent.model.provider == 'anthropic' && " +
          "task.agent.model.version in ['20240229', '20240307', '20240620']",
        message: "this model version is retired; move the agent to a current snapshot",
      },
      {
        name: "no-shell-or-browser",
        deny: "task.agent.tools.exists(t, t.name == 'shell' || (t.name == 'browser' && t.version.startsWith('0.')))",
        message: "agents may not run a shell or a pre-1.0 browser tool",
      },
      {
        name: "contractors-narrow",
        stages: ["issuance"],
        when: "delegator.kind == 'User' && delegator.groups.exists(g, g == 'contractors' || g.startsWith('ext-'))",
        maxTtl: "15m",
        scopeCeiling: ["read:repos/acme/*"],
      },
      {
        name: "no-secret-repos",
        stages: ["action"],
        deny: "resource.type == 'repo' && resource.id.startsWith('repos/acme/secret')",
        message: "secret repositories are off limits to agents",
      },
      {
        name: "prod-writes-need-ticket",
        stages: ["action"],
        deny:
          "action.name != 'read' && 'env' in context && context.env == 'prod' && " +
          "!('ticket' in context && string(context.ticket).startsWith('CHG-'))",
        message: "writes in prod need a change ticket (context.ticket CHG-…)",
      },
    ],
  },
};

const spiffeId = buildTaskSpiffeId({
  trustDomain: TRUST_DOMAIN,
  namespace: NAMESPACE,
  agent: "planner",
  task: "t1",
});
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

function agentTask(certificate?: NonNullable<AgentTask["status"]>["certificate"]): AgentTask {
  return {
    apiVersion: "custody.dev/v1alpha1",
    kind: "AgentTask",
    metadata: { name: "t1", namespace: NAMESPACE, uid: taskUid },
    spec: {
      agent: {
        name: "planner",
        model: { provider: "anthropic", name: "claude-sonnet-4-5", version: "20250929" },
        tools: [
          { name: "git", version: "2.45.1" },
          { name: "github-api", version: "2022-11-28" },
          { name: "browser", version: "1.4.0" },
          { name: "ripgrep", version: "14.1.0" },
        ],
        labels: { tier: "coding" },
      },
      scope: SCOPE,
      audiences: ["https://api.example"],
      ttl: "1h",
      serviceAccountName: "bench",
    },
    status: {
      phase: "Issued",
      spiffeID: spiffeId,
      delegationChain: chain,
      policyVersion: "policy-7",
      // The contractors-narrow ceiling dropped write:repos/acme/docs at issuance.
      grantedScope: ["read:repos/acme/*"],
      ...(certificate ? { certificate } : {}),
    },
  };
}

// ---------------------------------------------------------------- 1. evaluation

const sink: unknown[] = [];

function rate(name: string, op: (i: number) => unknown): number {
  const warmUntil = performance.now() + 500; // warm-up: JIT, cel-js's type caches
  for (let i = 0; performance.now() < warmUntil; i++) for (let j = 0; j < 100; j++) sink[0] = op(i * 100 + j);
  let n = 0;
  const start = process.hrtime.bigint();
  const budget = BigInt(Math.round(EVAL_SECONDS * 1e9));
  let elapsed = 0n;
  while (elapsed < budget) {
    for (let i = 0; i < 200; i++) sink[0] = op(n++);
    elapsed = process.hrtime.bigint() - start;
  }
  const perSecond = n / (Number(elapsed) / 1e9);
  console.log(
    `  ${name.padEnd(64)} ${fmt(perSecond).padStart(9)} /s  ${(1e6 / perSecond).toFixed(2).padStart(7)} µs/eval`,
  );
  return perSecond;
}

function evaluation(): void {
  console.log(
    `1. Policy evaluation, one call at a time (one core), ${EVAL_SECONDS} s per row after a 0.5 s warm-up.`,
  );
  const t0 = performance.now();
  const compiled = compilePolicy(policy);
  const cold = performance.now() - t0;
  const expressions = policy.spec.rules.reduce(
    (n, r) => n + (r.when ? 1 : 0) + (r.deny ? 1 : 0) + (r.allow ? 1 : 0),
    0,
  );
  // Warm: every version of a policy compiles once; time a fresh compile each round.
  let compiles = 0;
  const compileStart = performance.now();
  while (performance.now() - compileStart < 1_000) {
    sink[0] = compilePolicy(policy);
    compiles++;
  }
  const warm = (performance.now() - compileStart) / compiles;
  console.log(
    `   Policy: ${policy.kind} ${policy.metadata.namespace}/${policy.metadata.name}, ${policy.spec.rules.length} rules, ` +
      `${expressions} CEL expressions, version ${compiled.version.slice(0, 19)}…`,
  );
  console.log(
    `   compilePolicy (parse, bound, type-check; once per version): first ${cold.toFixed(1)} ms ` +
      `(builds the shared CEL environment), then ${(warm * 1000).toFixed(0)} µs per policy ` +
      `(${fmt(compiles)} compiles in 1 s)`,
  );

  const task = agentTask();
  // The root delegator was in "contractors" at admission: the `when` guard applies at issuance.
  const selection = selectionFacts(task, undefined, chain, ["devs", "contractors"]);
  const issuance = issuanceFacts(task, selection, chain, "issuance", now);
  const base = issuanceFacts(task, selection, chain, "action", now);
  const action: PolicyFacts = {
    ...base,
    action: { name: "read", properties: {} },
    resource: { type: "repo", id: "repos/acme/api", properties: {} },
    context: { env: "prod", requestId: "r-42", attempt: 1 },
  };
  const policies = [compiled];
  const options: DecideOptions = { defaultDecision: "deny", budgetMs: 5 };
  const state: TaskState = {
    phase: "Issued",
    revoked: false,
    deleting: false,
    notAfter: now + 3_600_000,
    grantedScope: ["read:repos/acme/*"],
  };
  const { stage: _s, ...actionBase } = base;
  const ask = (verb: string, id: string, context?: Record<string, unknown>): ActionRequest => ({
    action: verb,
    resource: { type: "repo", id },
    ...(context ? { context } : {}),
  });
  const mix = REQUEST_MIX.map((m) => ask(m.verb, m.id, m.context));

  // The very first evaluation after a compile runs cold (cel-js and V8 warm up on it).
  const firstStart = performance.now();
  decide(policies, issuance, { ...options, budgetMs: Number.POSITIVE_INFINITY });
  const firstMs = performance.now() - firstStart;
  for (let i = 0; i < 100; i++) decide(policies, issuance, options);
  // Check each row measures the path it names before timing it.
  const atIssuance = decide(policies, issuance, options);
  if (!atIssuance.allowed || atIssuance.maxTtlMs !== 15 * 60_000 || atIssuance.dropped.length !== 1)
    throw new Error(`unexpected issuance decision: ${JSON.stringify(atIssuance)}`);
  const atAction = decide(policies, action, options);
  if (!atAction.allowed) throw new Error(`unexpected action decision: ${JSON.stringify(atAction)}`);
  const expected = REQUEST_MIX.map((m) => m.allow);
  const got = mix.map(
    (request) => decideAction({ facts: actionBase, state, request, policies, options }).allowed,
  );
  if (got.join() !== expected.join()) throw new Error(`unexpected decideAction outcomes: ${got.join()}`);

  console.log(
    `   The first decide after the compile took ${firstMs.toFixed(2)} ms (cold; the per-policy budget is ` +
      `${options.budgetMs} ms, past it a policy denies).`,
  );
  console.log(
    `   Facts: agent with 4 tools, 3-link chain, delegator in 2 groups; decide runs the rules of its stage ` +
      "(issuance: 3, action: 4) over celContext(facts).",
  );
  rate("decide, stage issuance (allow; maxTtl 15m, ceiling drops 1 grant)", () =>
    decide(policies, issuance, options),
  );
  rate("decide, stage action (read repos/acme/api, context of 3 keys)", () =>
    decide(policies, action, options),
  );
  // The same request as the row above, through the state and scope checks first.
  const same = ask("read", "repos/acme/api", action.context);
  rate("decideAction (state + scope + policy), the same request: allow", () =>
    decideAction({ facts: actionBase, state, request: same, policies, options }),
  );
  rate(`decideAction over the endpoint's request mix (${mixSummary()})`, (i) =>
    decideAction({ facts: actionBase, state, request: mix[i % mix.length]!, policies, options }),
  );
}

// ---------------------------------------------------------------- 2. endpoint

/** The endpoint's request mix, cycled: 8 of 10 allowed, 1 out of scope, 1 denied by policy. */
const REQUEST_MIX: ReadonlyArray<{
  verb: string;
  id: string;
  context?: Record<string, unknown>;
  allow: boolean;
  why: string;
}> = [
  { verb: "read", id: "repos/acme/api", allow: true, why: "in scope" },
  {
    verb: "read",
    id: "repos/acme/api",
    context: { env: "prod", requestId: "r-1" },
    allow: true,
    why: "in scope",
  },
  { verb: "read", id: "repos/acme/web", allow: true, why: "in scope" },
  { verb: "write", id: "repos/acme/docs", allow: false, why: "out of scope (dropped at issuance)" },
  { verb: "read", id: "repos/acme/api", allow: true, why: "in scope" },
  { verb: "read", id: "repos/acme/infra", context: { env: "staging" }, allow: true, why: "in scope" },
  { verb: "read", id: "repos/acme/api", allow: true, why: "in scope" },
  { verb: "read", id: "repos/acme/secret-plans", allow: false, why: "policy: no-secret-repos" },
  { verb: "read", id: "repos/acme/api", allow: true, why: "in scope" },
  { verb: "read", id: "repos/acme/cli", allow: true, why: "in scope" },
];

function mixSummary(): string {
  const allow = REQUEST_MIX.filter((m) => m.allow).length;
  return `${allow} allow / ${REQUEST_MIX.length - allow} deny of ${REQUEST_MIX.length}`;
}

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
      "so these latencies leave out the acknowledgement a real decision waits for. Run `make up` for the real number.",
    cleanup: async () => undefined,
  });
  if (!existsSync(join(envDir, "env.json"))) return fallback(`no local environment at ${envDir}`);
  const brokers = localEnv().kafkaBrokers.split(",");
  if (!(await reachable(brokers[0]!, 1_500))) return fallback(`Kafka at ${brokers[0]} is unreachable`);
  const topic = `custody.bench.policy.${randomBytes(4).toString("hex")}`;
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
          clientId: "custody-bench-policy",
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
  /** The AuthZEN decision of a 200 answer. */
  decision?: boolean;
  /** Which entry of REQUEST_MIX was asked. */
  kind: number;
  detail: string;
}

async function endpointLatency(): Promise<void> {
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
      scope: ["read:repos/acme/*"],
      chainDigest: chainDigest(chain),
      chainDepth: chain.length - 1,
      policyVersion: "policy-7",
      specDigest: randomBytes(32),
    },
  });
  const task = agentTask({
    serial: svid.serialHex,
    notBefore: notBefore.toISOString(),
    notAfter: notAfter.toISOString(),
    renewalTime: new Date(now + 2_400_000).toISOString(),
    publicKeySHA256: svid.publicKeySHA256,
    secretName: "t1-svid",
  });
  const store = new PolicyStore({ defaultDecision: "deny", budgetMs: 5 });
  store.upsert(policy);
  const key = generateJwtKey("ES256", now, now);
  const getTask = (k: string) => (k === `${NAMESPACE}/t1` ? task : undefined);
  const opened = await openRecorder();
  const { label, cleanup } = opened;
  // The same recorder, timed: how long each decision waits for its event's acknowledgement.
  const recordMs: number[] = [];
  let timing = false;
  const inner = opened.recorder;
  const recorder: ProvenanceRecorder = {
    record: (async (...args: Parameters<ProvenanceRecorder["record"]>) => {
      const t = performance.now();
      await inner.record(...args);
      if (timing) recordMs.push(performance.now() - t);
    }) as ProvenanceRecorder["record"],
    get healthy() {
      return inner.healthy;
    },
    get backlog() {
      return inner.backlog;
    },
    get ackedHead() {
      return inner.ackedHead;
    },
    close: () => inner.close(),
  };
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
    getTask,
    jwksMaxAgeSeconds: 60,
    authzen: (openStream) =>
      createAuthzenHandler({
        issuer: ISSUER,
        trustDomain: TRUST_DOMAIN,
        keys: { published: () => [key] },
        trustAnchorsDer: () => ca.bundleDer,
        getTask,
        recordOf: () => undefined,
        policies: store,
        // The agent asks for itself over mTLS: no resource server is configured.
        reviewToken: async () => undefined,
        callers: new Set(),
        recorder: openStream,
        reportsPerSecond: 10,
        log: log.child("authzen"),
      }),
    openRecorder: async () => recorder,
    log: log.child("identity"),
  });
  const agent = new Agent({ keepAlive: true, cert: svid.chainPem, key: leaf.privateKeyPem, ca: ca.certPem });
  const bodies = REQUEST_MIX.map((m) =>
    JSON.stringify({
      subject: { type: "agent", id: spiffeId },
      action: { name: m.verb },
      resource: { type: "repo", id: m.id },
      ...(m.context ? { context: m.context } : {}),
    }),
  );

  const send = (due: number, kind: number) =>
    new Promise<Answer>((resolve) => {
      const body = bodies[kind]!;
      const done = (status: number, text: string) => {
        const at = performance.now();
        let decision: boolean | undefined;
        let detail = "";
        try {
          const parsed = JSON.parse(text) as {
            decision?: boolean;
            error?: string;
            error_description?: string;
          };
          if (status === 200) decision = parsed.decision;
          else detail = `${parsed.error}: ${parsed.error_description}`;
        } catch {
          detail = text.slice(0, 200);
        }
        resolve({ status, ms: at - due, at, kind, detail, ...(decision !== undefined ? { decision } : {}) });
      };
      const req = request(
        {
          agent,
          host: "127.0.0.1",
          port: endpoint.port,
          method: "POST",
          path: EVALUATION_PATH,
          headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) },
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

  /** Open loop: request i leaves at start + i/rate whether or not earlier ones were answered. */
  const openLoop = async (rate: number, count: number) => {
    const answers: Promise<Answer>[] = [];
    const start = performance.now();
    const dueOf = (i: number) => start + (i * 1000) / rate;
    for (let i = 0; i < count; ) {
      while (i < count && dueOf(i) <= performance.now()) {
        answers.push(send(dueOf(i), i % REQUEST_MIX.length));
        i++;
      }
      if (i < count) await new Promise((r) => setTimeout(r, Math.max(0, dueOf(i) - performance.now())));
    }
    const sentIn = (performance.now() - start) / 1000;
    return { answers: await Promise.all(answers), start, sentIn };
  };

  try {
    const first = await send(performance.now(), 0);
    if (first.status !== 200 || first.decision !== true)
      throw new Error(
        `the first evaluation was not allowed: ${first.status} ${first.decision} ${first.detail}`,
      );
    console.log(
      `\n2. Decision endpoint (AuthZEN ${EVALUATION_PATH}) over HTTPS + mutual TLS (keep-alive), the real ` +
        `identity endpoint in this process, open loop at ${fmt(RATE)} req/s for ${SECONDS} s.`,
    );
    console.log(
      "   Latency: from each request's scheduled send time to the last byte of its answer (client mTLS, " +
        "X.509-SVID verify, live-serial check, decideAction over the policy, provenance record, response).",
    );
    console.log(
      `   Mix, cycled: ${mixSummary()} (write repos/acme/docs: out of scope; read repos/acme/secret-plans: ` +
        "denied by policy); every decision, allow or deny, is recorded before it is answered.",
    );
    console.log("   Client and endpoint share one Node process (one event loop) on this machine.");
    console.log(`   Recorder: ${label}`);
    await openLoop(RATE, Math.max(50, Math.round(RATE))); // 1 s warm-up: connections, JIT, producer
    const count = Math.round(RATE * SECONDS);
    timing = true;
    const cpuBefore = process.cpuUsage();
    const { answers, start, sentIn } = await openLoop(RATE, count);
    const cpu = process.cpuUsage(cpuBefore);
    timing = false;
    const ok = answers.filter((a) => a.status === 200);
    const latencies = ok.map((a) => a.ms).sort((a, b) => a - b);
    const lastAt = Math.max(...answers.map((a) => a.at));
    const allowed = ok.filter((a) => a.decision === true).length;
    const unexpected = ok.filter((a) => a.decision !== REQUEST_MIX[a.kind]!.allow).length;
    const errors = new Map<string, number>();
    for (const a of answers)
      if (a.status !== 200) {
        const k = `${a.status || "no answer"} ${a.detail}`;
        errors.set(k, (errors.get(k) ?? 0) + 1);
      }
    const expectedAllow = answers.filter((a) => REQUEST_MIX[a.kind]!.allow).length;
    console.log(
      `   sent ${fmt(count)} in ${sentIn.toFixed(2)} s (${fmt(count / sentIn)}/s offered); ` +
        `${fmt(ok.length)} answered 200 by ${((lastAt - start) / 1000).toFixed(2)} s ` +
        `(${fmt(ok.length / ((lastAt - start) / 1000))}/s achieved)`,
    );
    console.log(
      `   latency p50 ${percentile(latencies, 50).toFixed(1)} ms  p99 ${percentile(latencies, 99).toFixed(1)} ms  ` +
        `max ${(latencies[latencies.length - 1] ?? Number.NaN).toFixed(1)} ms`,
    );
    recordMs.sort((a, b) => a - b);
    console.log(
      `   of which waiting for the provenance record's acknowledgement: p50 ${percentile(recordMs, 50).toFixed(1)} ms  ` +
        `p99 ${percentile(recordMs, 99).toFixed(1)} ms  max ${(recordMs[recordMs.length - 1] ?? Number.NaN).toFixed(1)} ms`,
    );
    console.log(
      `   decisions: ${fmt(allowed)} allow, ${fmt(ok.length - allowed)} deny ` +
        `(expected ${fmt(expectedAllow)} / ${fmt(count - expectedAllow)}; ${fmt(unexpected)} differ from the expectation)`,
    );
    console.log(`   errors (non-200): ${fmt(count - ok.length)}`);
    console.log(
      `   CPU of this process (client and endpoint) over the run: ${((cpu.user + cpu.system) / 1000 / count).toFixed(2)} ms ` +
        `per request (${((cpu.user + cpu.system) / 1e6).toFixed(1)} s user+system; the machine has ${availableParallelism()} cores)`,
    );
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
  console.log(`policy bench: node ${process.version}, pid ${process.pid}`);
  evaluation();
  await endpointLatency();
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
