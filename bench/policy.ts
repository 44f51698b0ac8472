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
import { availableParallelism } from "node:os";
import type { AgentPolicy } from "../core/api/policy.ts";
import type { AgentTask } from "../core/api/v1alpha1.ts";
import { type ActionRequest, decideAction, type TaskState } from "../core/policy/action.ts";
import { compilePolicy } from "../core/policy/compile.ts";
import type { PolicyFacts } from "../core/policy/context.ts";
import { type DecideOptions, decide } from "../core/policy/decide.ts";
import { provenanceSalt } from "../core/provenance/events.ts";
import { buildTaskSpiffeId } from "../core/spiffe.ts";
import { createAuthzenHandler, EVALUATION_PATH } from "../operator/authzen.ts";
import { generateJwtKey } from "../operator/jwt-keys.ts";
import { issuanceFacts, PolicyStore, selectionFacts } from "../operator/policies.ts";
import type { ProvenanceRecorder } from "../operator/provenance.ts";
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
  percentiles,
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
const EVAL_SECONDS = flag("eval-seconds", 3);
const RATE = flag("rate", 500);
const SECONDS = flag("seconds", 10);

const NAMESPACE = "bench";
const SCOPE = ["read:repos/acme/*", "write:repos/acme/docs"];
const log = createLogger({ name: "bench-policy", level: "warn" });
dropTimeoutNegativeWarnings();

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
const chain = benchChain(taskUid, SCOPE);

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

interface Answer extends Timed {
  /** The AuthZEN decision of a 200 answer. */
  decision?: boolean;
  /** Which entry of REQUEST_MIX was asked. */
  kind: number;
}

async function endpointLatency(): Promise<void> {
  // The SVID carries the scope granted at issuance (the contractors-narrow ceiling dropped the write).
  const minted = mintAgentSvid({ spiffeId, taskUid, chain, scope: ["read:repos/acme/*"], now });
  const task = agentTask(minted.certificate);
  const store = new PolicyStore({ defaultDecision: "deny", budgetMs: 5 });
  store.upsert(policy);
  const key = generateJwtKey("ES256", now, now);
  const ancestor = ancestorTask(chain, { namespace: NAMESPACE, audiences: ["https://api.example"] });
  const tasks = new Map([
    [`${NAMESPACE}/t1`, task],
    [`${NAMESPACE}/${ancestor.metadata.name}`, ancestor],
  ]);
  const getTask = (k: string) => tasks.get(k);
  const opened = await openRecorder({ bench: "policy", waitsFor: "decision", now, log });
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
  const endpoint = await startBenchEndpoint({
    ca: minted.ca,
    key,
    getTask,
    recorder,
    authzen: (openStream) =>
      createAuthzenHandler({
        issuer: ISSUER,
        trustDomain: TRUST_DOMAIN,
        keys: { published: () => [key] },
        trustAnchorsDer: () => minted.ca.bundleDer,
        getTask,
        recordOf: () => undefined,
        policies: store,
        // The agent asks for itself over mTLS: no resource server is configured.
        reviewToken: async () => undefined,
        callers: new Set(),
        recorder: openStream,
        salt: provenanceSalt(randomBytes(32)),
        reportsPerSecond: 10,
        log: log.child("authzen"),
      }),
    log,
  });
  const agent = mtlsAgent(minted);
  const bodies = REQUEST_MIX.map((m) =>
    JSON.stringify({
      subject: { type: "agent", id: spiffeId },
      action: { name: m.verb },
      resource: { type: "repo", id: m.id },
      ...(m.context ? { context: m.context } : {}),
    }),
  );

  const send = (due: number, kind: number): Promise<Answer> =>
    post(agent, endpoint.port, EVALUATION_PATH, "application/json", bodies[kind]!).then(
      ({ status, text, at }) => {
        let decision: boolean | undefined;
        let detail = "";
        if (status !== 200) detail = errorDetail(text);
        else
          try {
            decision = (JSON.parse(text) as { decision?: boolean }).decision;
          } catch {
            detail = text.slice(0, 200);
          }
        return { status, ms: at - due, at, kind, detail, ...(decision !== undefined ? { decision } : {}) };
      },
    );
  /** Request i asks the i-th entry of REQUEST_MIX, cycled. */
  const sendMix = (due: number, i: number) => send(due, i % REQUEST_MIX.length);

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
    printSetup(label);
    await openLoop(RATE, Math.max(50, Math.round(RATE)), sendMix); // 1 s warm-up: connections, JIT, producer
    const count = Math.round(RATE * SECONDS);
    timing = true;
    const cpuBefore = process.cpuUsage();
    const { answers, start, sentIn } = await openLoop(RATE, count, sendMix);
    const cpu = process.cpuUsage(cpuBefore);
    timing = false;
    const { ok, errors } = printRun({ answers, count, start, sentIn });
    const allowed = ok.filter((a) => a.decision === true).length;
    const unexpected = ok.filter((a) => a.decision !== REQUEST_MIX[a.kind]!.allow).length;
    const expectedAllow = answers.filter((a) => REQUEST_MIX[a.kind]!.allow).length;
    recordMs.sort((a, b) => a - b);
    console.log(`   of which waiting for the provenance record's acknowledgement: ${percentiles(recordMs)}`);
    console.log(
      `   decisions: ${fmt(allowed)} allow, ${fmt(ok.length - allowed)} deny ` +
        `(expected ${fmt(expectedAllow)} / ${fmt(count - expectedAllow)}; ${fmt(unexpected)} differ from the expectation)`,
    );
    console.log(`   errors (non-200): ${fmt(count - ok.length)}`);
    console.log(
      `   CPU of this process (client and endpoint) over the run: ${((cpu.user + cpu.system) / 1000 / count).toFixed(2)} ms ` +
        `per request (${((cpu.user + cpu.system) / 1e6).toFixed(1)} s user+system; the machine has ${availableParallelism()} cores)`,
    );
    printErrorsAndSockets(errors, agent);
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
