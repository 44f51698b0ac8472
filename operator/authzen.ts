// The decision endpoint: OpenID AuthZEN Authorization API 1.0 (Access
// Evaluation and Evaluations), and reports of what was done. Served on the
// identity endpoint by every replica.
//
// Who asks, and about whom, is never taken from the body:
// - an agent asks for itself over mutual TLS with its X.509-SVID;
// - a resource server (or tool gateway) authenticates with a Kubernetes
//   service-account token bound to Custody's issuer (TokenReview), must be
//   listed in CUSTODY_AUTHZEN_CALLERS, and passes the credential the agent
//   presented to it in the `Custody-Agent-Credential` header (a JWT-SVID, or
//   the agent's X.509-SVID as base64 DER or URL-encoded PEM).
// The body's subject (type "agent", id the SPIFFE ID) must name the agent the
// validated credential names. Every decision is recorded (and acknowledged)
// before it is returned; when it cannot be, the answer is deny.
import { randomUUID } from "node:crypto";
import { decodeJwt, errors as joseErrors, jwtVerify } from "jose";
import { z } from "zod";
import type { RequesterRecord } from "../core/admission/record.ts";
import type { AgentTask } from "../core/api/v1alpha1.ts";
import { delegationContextOf } from "../core/delegation.ts";
import { describeJoseError } from "../core/jwt/exchange.ts";
import type { JwtKey } from "../core/jwt/keys.ts";
import { type ActionDecision, decideAction } from "../core/policy/action.ts";
import { canonicalize } from "../core/provenance/canonical-json.ts";
import {
  type DelegationContext,
  digestSensitive,
  eventReasons,
  type ProvenanceSalt,
} from "../core/provenance/events.ts";
import { fromPem } from "../core/x509/pem.ts";
import type { IdentityRequest, IdentityResponse } from "../shells/https/identity-server.ts";
import type { AuthenticatedUser } from "../shells/kube/authentication.ts";
import type { Logger } from "../shells/log.ts";
import { fullBucket, type TokenBucket, takeToken } from "../shells/token-bucket.ts";
import { ancestorProblem, taskOfSpiffeId } from "./identity-endpoint.ts";
import { issuanceFacts, type PolicyStore, rootDelegatorGroups, selectionFacts } from "./policies.ts";
import { type ProvenanceRecorder, recordWithin } from "./provenance.ts";
import { createSvidVerifier } from "./svid-verifier.ts";
import { currentSerials, isDeleting } from "./task-reconciler.ts";

export const EVALUATION_PATH = "/access/v1/evaluation";
export const EVALUATIONS_PATH = "/access/v1/evaluations";
export const REPORTS_PATH = "/custody/v1/reports";
export const AUTHZEN_METADATA_PATH = "/.well-known/authzen-configuration";
export const AGENT_CREDENTIAL_HEADER = "custody-agent-credential";
export const MAX_EVALUATIONS = 64;

const JSON_HEADERS = { "content-type": "application/json", "cache-control": "no-store" };

/**
 * Request data rules may iterate is bounded, so that a rule's cost stays
 * bounded (two nested comprehensions over at most 64 items): at most 4,096
 * characters of JSON, nested 4 deep, lists of at most 64 items.
 */
const MAX_REQUEST_DATA_CHARS = 4096;
function boundedJson(value: unknown, ctx: z.RefinementCtx): void {
  const problem = (v: unknown, depth: number): string | undefined => {
    if (depth > 4) return "is nested more than 4 deep";
    if (Array.isArray(v)) {
      if (v.length > 64) return "has a list of more than 64 items";
      for (const x of v) {
        const p = problem(x, depth + 1);
        if (p) return p;
      }
    } else if (v !== null && typeof v === "object") {
      for (const x of Object.values(v)) {
        const p = problem(x, depth + 1);
        if (p) return p;
      }
    }
    return undefined;
  };
  const found =
    JSON.stringify(value).length > MAX_REQUEST_DATA_CHARS
      ? `is larger than ${MAX_REQUEST_DATA_CHARS} characters of JSON`
      : problem(value, 0);
  if (found) ctx.addIssue({ code: "custom", message: found });
}
const properties = z.record(z.string().max(128), z.unknown()).superRefine(boundedJson).optional();
const subjectSchema = z.object({
  type: z.literal("agent", { error: 'subject.type must be "agent"' }),
  id: z.string().min(1).max(2048),
  properties,
});
const actionSchema = z.object({ name: z.string().min(1).max(32), properties });
const resourceSchema = z.object({
  type: z.string().min(1).max(256),
  id: z.string().min(1).max(1024),
  properties,
});
const contextSchema = z.record(z.string().max(128), z.unknown()).superRefine(boundedJson).optional();
const evaluationSchema = z.object({
  subject: subjectSchema,
  action: actionSchema,
  resource: resourceSchema,
  context: contextSchema,
});
const batchSchema = z.object({
  subject: subjectSchema.optional(),
  action: actionSchema.optional(),
  resource: resourceSchema.optional(),
  context: contextSchema,
  evaluations: z
    .array(
      z.object({
        subject: subjectSchema.optional(),
        action: actionSchema.optional(),
        resource: resourceSchema.optional(),
        context: contextSchema,
      }),
    )
    .min(1)
    .max(MAX_EVALUATIONS),
});
const reportSchema = z.object({
  subject: subjectSchema,
  action: actionSchema,
  resource: resourceSchema,
  outcome: z.string().min(1).max(64).optional(),
  context: contextSchema,
});
type Evaluation = z.output<typeof evaluationSchema>;

export interface AuthzenDeps {
  issuer: string;
  trustDomain: string;
  keys: { published(): JwtKey[] };
  trustAnchorsDer: () => readonly Uint8Array[];
  getTask: (key: string) => AgentTask | undefined;
  /** The task's verified requester record (labels at creation), for policy selection. */
  recordOf: (task: AgentTask) => RequesterRecord | undefined;
  policies: PolicyStore;
  reviewToken: (token: string) => Promise<AuthenticatedUser | undefined>;
  /** Kubernetes usernames allowed to ask about agents. */
  callers: ReadonlySet<string>;
  recorder: () => Promise<Pick<ProvenanceRecorder, "record">>;
  /** Request contexts are recorded only as HMACs under this salt. */
  salt: ProvenanceSalt;
  reportsPerSecond: number;
  recordTimeoutMs?: number;
  log: Logger;
  now?: () => number;
}

class Refusal extends Error {
  readonly status: number;
  readonly error: string;
  constructor(status: number, error: string, message: string) {
    super(message);
    this.status = status;
    this.error = error;
  }
}

/** Who asks, authenticated. */
interface Caller {
  readonly kind: "agent" | "resource-server";
  readonly name: string;
}

/** The agent the validated credential names. */
interface Agent {
  readonly spiffeId: string;
  readonly credential: "x509-svid" | "jwt-svid";
  /** For an X.509-SVID: its serial (must be live); for a JWT-SVID: its task uid and audiences. */
  readonly serial?: string;
  readonly taskUid?: string;
  /** The task its SPIFFE ID names, when authenticating it already looked it up (a JWT-SVID's audiences). */
  readonly task?: AgentTask;
}

export function createAuthzenHandler(deps: AuthzenDeps) {
  const now = deps.now ?? Date.now;
  const timeoutMs = deps.recordTimeoutMs ?? 5_000;
  const buckets = new Map<string, TokenBucket>();
  const verifySvidOf = createSvidVerifier(deps.trustAnchorsDer, deps.trustDomain);
  const metadata = JSON.stringify({
    policy_decision_point: deps.issuer,
    access_evaluation_endpoint: `${deps.issuer}${EVALUATION_PATH}`,
    access_evaluations_endpoint: `${deps.issuer}${EVALUATIONS_PATH}`,
  });

  return async (req: IdentityRequest): Promise<IdentityResponse | undefined> => {
    if (req.path === AUTHZEN_METADATA_PATH && req.method === "GET") {
      return {
        status: 200,
        headers: { "content-type": "application/json", "cache-control": "public, max-age=3600" },
        body: metadata,
      };
    }
    if (req.path !== EVALUATION_PATH && req.path !== EVALUATIONS_PATH && req.path !== REPORTS_PATH)
      return undefined;
    try {
      if (req.method !== "POST") throw new Refusal(405, "method_not_allowed", "use POST");
      const { caller, agent } = await authenticate(req);
      const body = parseJson(req);
      if (req.path === REPORTS_PATH) return await report(caller, agent, body);
      if (req.path === EVALUATION_PATH) {
        const evaluation = validate(evaluationSchema, body);
        const [answer] = await evaluate(caller, agent, [evaluation]);
        return json(200, answer);
      }
      const batch = validate(batchSchema, body);
      const items = batch.evaluations.map((e, i) =>
        validate(
          evaluationSchema,
          {
            subject: e.subject ?? batch.subject,
            action: e.action ?? batch.action,
            resource: e.resource ?? batch.resource,
            context: e.context ?? batch.context,
          },
          `evaluations[${i}].`,
        ),
      );
      return json(200, { evaluations: await evaluate(caller, agent, items) });
    } catch (err) {
      if (!(err instanceof Refusal)) {
        deps.log.error("decision endpoint failed", {
          error: err instanceof Error ? err.message : String(err),
        });
        return json(500, {
          error: "server_error",
          error_description: "the decision failed inside Custody; nothing is allowed",
        });
      }
      return json(err.status, { error: err.error, error_description: err.message });
    }
  };

  // ---------------------------------------------------------------- authentication

  async function authenticate(req: IdentityRequest): Promise<{ caller: Caller; agent: Agent }> {
    const t = now();
    const bearer = /^Bearer (.+)$/i.exec(String(req.headers.authorization ?? ""))?.[1];
    if (bearer) {
      const user = await deps.reviewToken(bearer).catch(() => undefined);
      if (!user)
        throw new Refusal(
          401,
          "unauthenticated",
          "the bearer token is not a valid Kubernetes token for this issuer's audience",
        );
      if (!deps.callers.has(user.username)) {
        throw new Refusal(
          403,
          "forbidden",
          `${user.username} is not a configured decision-endpoint caller (CUSTODY_AUTHZEN_CALLERS)`,
        );
      }
      const presented = req.headers[AGENT_CREDENTIAL_HEADER];
      if (typeof presented !== "string" || presented.length === 0) {
        throw new Refusal(
          400,
          "invalid_request",
          `the ${AGENT_CREDENTIAL_HEADER} header (the credential the agent presented) is required`,
        );
      }
      return {
        caller: { kind: "resource-server", name: user.username },
        agent: await agentFromCredential(presented, t),
      };
    }
    if (req.peerRejected) {
      throw new Refusal(
        401,
        "unauthenticated",
        `the client certificate was not accepted (${req.peerError ?? "it does not chain to Custody's CA"})`,
      );
    }
    if (!req.peer) {
      throw new Refusal(
        401,
        "unauthenticated",
        "authenticate with the agent's X.509-SVID (mutual TLS) or a resource server's bearer token",
      );
    }
    const svid = checkX509(req.peer.der, [...req.peer.intermediates], t, 401, "unauthenticated");
    return { caller: { kind: "agent", name: svid.spiffeId }, agent: svid };
  }

  async function agentFromCredential(value: string, t: number): Promise<Agent> {
    if (/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(value)) return checkJwt(value, t);
    let der: Uint8Array;
    // A PEM chain (as Envoy's XFCC carries it): the leaf, then the intermediates up to a trust anchor.
    let intermediates: Uint8Array[] = [];
    try {
      const text = decodeURIComponent(value);
      if (text.includes("-----BEGIN")) {
        const blocks = fromPem(text, AGENT_CREDENTIAL_HEADER).filter((b) => b.label === "CERTIFICATE");
        der = blocks[0]!.der;
        intermediates = blocks.slice(1).map((b) => b.der);
      } else {
        der = new Uint8Array(Buffer.from(text, "base64"));
      }
    } catch {
      throw new Refusal(
        403,
        "invalid_credential",
        `${AGENT_CREDENTIAL_HEADER}: neither a JWT-SVID nor an X.509-SVID`,
      );
    }
    return checkX509(der, intermediates, t, 403, "invalid_credential");
  }

  function checkX509(
    der: Uint8Array,
    intermediates: Uint8Array[],
    t: number,
    status: number,
    error: string,
  ): Agent {
    const check = verifySvidOf(der, intermediates, t);
    if (check.ok) return { spiffeId: check.spiffeId, credential: "x509-svid", serial: check.serialHex };
    throw new Refusal(
      status,
      error,
      check.kind === "trust-domain"
        ? "the credential is from another trust domain"
        : `the X.509-SVID is not valid: ${check.message}`.slice(0, 512),
    );
  }

  async function checkJwt(token: string, t: number): Promise<Agent> {
    let sub: string | undefined;
    try {
      sub = decodeJwt(token).sub;
    } catch {
      throw new Refusal(403, "invalid_credential", "the JWT-SVID is not a well-formed JWT");
    }
    // The audience the agent presented it for must be one the task names.
    const task = sub ? taskOf(sub) : undefined;
    const audiences = task?.spec.audiences ?? [];
    if (!task || audiences.length === 0)
      throw new Refusal(403, "invalid_credential", "the JWT-SVID names no task with audiences");
    const published = deps.keys.published();
    try {
      const { payload } = await jwtVerify(
        token,
        (header) => {
          const key = published.find((k) => k.kid === header.kid);
          if (!key || key.alg !== header.alg) throw new Error("unknown key");
          return key.publicKey;
        },
        {
          issuer: deps.issuer,
          audience: [...audiences],
          algorithms: [...new Set(published.map((k) => k.alg))],
          typ: "JWT",
          requiredClaims: ["sub", "exp", "iat", "jti"],
          currentDate: new Date(t),
        },
      );
      const custody = payload.custody as { taskUid?: unknown } | undefined;
      return {
        spiffeId: payload.sub!,
        credential: "jwt-svid",
        ...(typeof custody?.taskUid === "string" ? { taskUid: custody.taskUid } : {}),
        task,
      };
    } catch (err) {
      const aud = err instanceof joseErrors.JWTClaimValidationFailed && err.claim === "aud";
      throw new Refusal(
        403,
        "invalid_credential",
        `the JWT-SVID ${aud ? "is not for one of the task's audiences" : describeJoseError(err)}`,
      );
    }
  }

  // ---------------------------------------------------------------- decisions

  async function evaluate(caller: Caller, agent: Agent, items: Evaluation[]): Promise<unknown[]> {
    for (const [i, e] of items.entries()) {
      if (e.subject.id !== agent.spiffeId) {
        throw new Refusal(
          403,
          "subject_mismatch",
          `${items.length > 1 ? `evaluations[${i}].` : ""}subject.id is not the agent the credential names (${agent.spiffeId})`,
        );
      }
    }
    const t = now();
    const task = agent.task ?? taskOf(agent.spiffeId);
    // Everything about the task is the same for every item: worked out once.
    const prepared = task ? prepare(task, agent, t) : { denied: deny("no task holds this identity") };
    const recorded = task && contextOf(task);
    return Promise.all(
      items.map(async (e) => {
        const decision =
          "denied" in prepared
            ? prepared.denied
            : decideAction({
                ...prepared,
                request: {
                  action: e.action.name,
                  ...(e.action.properties ? { actionProperties: e.action.properties } : {}),
                  resource: {
                    type: e.resource.type,
                    id: e.resource.id,
                    ...(e.resource.properties ? { properties: e.resource.properties } : {}),
                  },
                  ...(e.context ? { context: e.context } : {}),
                },
                options: { defaultDecision: deps.policies.defaultDecision, budgetMs: deps.policies.budgetMs },
              });
        const id = randomUUID();
        let allowed = decision.allowed;
        const reasons = [...decision.reasons];
        if (recorded) {
          try {
            await record(
              "dev.custody.task.action.decided",
              agent.spiffeId,
              {
                context: recorded,
                policyVersion: decision.version,
                decision: allowed ? "allow" : "deny",
                reasons: eventReasons(reasons),
                action: e.action.name,
                resource: { type: e.resource.type, id: e.resource.id },
                caller: { kind: caller.kind, name: caller.name.slice(0, 512) },
                credential: agent.credential,
                ...(e.context ? { sensitive: sensitiveContext(deps.salt, e.context) } : {}),
              },
              recorded.rootUid,
              id,
            );
          } catch (err) {
            deps.log.warn("decision not recorded: denied", { error: (err as Error).message });
            allowed = false;
            reasons.push(
              "the decision could not be recorded in the provenance stream; nothing is allowed without it",
            );
          }
        } else {
          allowed = false;
        }
        return {
          decision: allowed,
          context: {
            id,
            policy_version: decision.version,
            ...(allowed ? {} : { reason_admin: { en: reasons.join("; ") } }),
          },
        };
      }),
    );
  }

  /**
   * What a decision about this agent needs of its task, or the denial that
   * ends it before any rule runs (another task's credential, a replaced
   * certificate, an ancestor that no longer holds its delegation).
   */
  function prepare(
    task: AgentTask,
    agent: Agent,
    t: number,
  ): { denied: ActionDecision } | Pick<Parameters<typeof decideAction>[0], "facts" | "state" | "policies"> {
    if (agent.taskUid !== undefined && agent.taskUid !== task.metadata.uid) {
      return { denied: deny("the credential was issued to an earlier task of this name") };
    }
    if (agent.serial !== undefined && !currentSerials(task, t).includes(agent.serial)) {
      return { denied: deny("the X.509-SVID is not the task's current certificate (revoked or replaced)") };
    }
    const chain = task.status?.delegationChain ?? [];
    const above = chain
      .filter((l) => l.kind === "AgentTask")
      .map((l) => l.name)
      .slice(0, -1);
    const ancestor = ancestorProblem(task, above, deps.getTask);
    if (ancestor) return { denied: deny(ancestor) };
    const record = deps.recordOf(task);
    const selection = selectionFacts(
      task,
      record,
      chain,
      rootDelegatorGroups(task, record, chain, deps.getTask),
    );
    const cert = task.status?.certificate;
    return {
      facts: issuanceFacts(task, selection, chain, "action", t),
      state: {
        phase: task.status?.phase,
        revoked: task.spec.revoked === true,
        deleting: isDeleting(task),
        notAfter: cert ? Date.parse(cert.notAfter) : undefined,
        grantedScope: task.status?.grantedScope ?? task.spec.scope,
      },
      policies: deps.policies.select(selection),
    };
  }

  // ---------------------------------------------------------------- reports

  async function report(caller: Caller, agent: Agent, body: unknown): Promise<IdentityResponse> {
    const r = validate(reportSchema, body);
    if (r.subject.id !== agent.spiffeId) {
      throw new Refusal(
        403,
        "subject_mismatch",
        `subject.id is not the agent the credential names (${agent.spiffeId})`,
      );
    }
    const task = agent.task ?? taskOf(agent.spiffeId);
    if (!task) throw new Refusal(404, "unknown_agent", "no task holds this identity");
    // Only under the task the credential was issued to, with a credential still its own.
    if (agent.taskUid !== undefined && agent.taskUid !== task.metadata.uid) {
      throw new Refusal(
        403,
        "invalid_credential",
        "the credential was issued to an earlier task of this name",
      );
    }
    if (agent.serial !== undefined && !currentSerials(task, now()).includes(agent.serial)) {
      throw new Refusal(403, "invalid_credential", "the X.509-SVID is not the task's current certificate");
    }
    // One bucket per reporter and agent, charged only for a report that
    // passed every check: a rogue agent's self-reports cannot use up the
    // budget of the gateway that reports on it.
    if (!take(`${caller.kind}:${caller.name}|${agent.spiffeId}`)) {
      throw new Refusal(
        429,
        "rate_limited",
        `at most ${deps.reportsPerSecond} reports per second per agent and reporter`,
      );
    }
    const context = contextOf(task);
    const id = randomUUID();
    try {
      await record(
        "dev.custody.task.action.performed",
        agent.spiffeId,
        {
          context,
          action: r.action.name,
          resource: { type: r.resource.type, id: r.resource.id },
          ...(r.outcome ? { outcome: r.outcome } : {}),
          reporter: { kind: caller.kind, name: caller.name.slice(0, 512) },
          selfReported: caller.kind === "agent",
          ...(r.context ? { sensitive: sensitiveContext(deps.salt, r.context) } : {}),
        },
        context.rootUid,
        id,
      );
    } catch {
      throw new Refusal(503, "temporarily_unavailable", "the report could not be recorded; try again");
    }
    return json(202, { id, selfReported: caller.kind === "agent" });
  }

  function take(agent: string): boolean {
    const t = now();
    const rate = deps.reportsPerSecond;
    const b = buckets.get(agent) ?? fullBucket(rate * 10, t);
    buckets.set(agent, b);
    if (buckets.size > 100_000) buckets.delete(buckets.keys().next().value as string);
    return takeToken(b, rate, rate * 10, t);
  }

  // ---------------------------------------------------------------- helpers

  function taskOf(spiffeId: string): AgentTask | undefined {
    return taskOfSpiffeId(spiffeId, deps.trustDomain, deps.getTask);
  }

  function record(...args: Parameters<ProvenanceRecorder["record"]>): Promise<void> {
    return recordWithin(deps.recorder, timeoutMs, ...args);
  }
}

/** A denial decided before any policy ran. */
function deny(reason: string): ActionDecision {
  return { allowed: false, reasons: [reason], version: "none", policies: [] };
}

function parseJson(req: IdentityRequest): unknown {
  if (!req.contentType.toLowerCase().startsWith("application/json")) {
    throw new Refusal(400, "invalid_request", "the body must be application/json");
  }
  try {
    return JSON.parse(req.body.toString("utf8"));
  } catch {
    throw new Refusal(400, "invalid_request", "the body is not JSON");
  }
}

function validate<T extends z.ZodType>(schema: T, value: unknown, prefix = ""): z.output<T> {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  const field = `${prefix}${issue.path.map(String).join(".")}` || "body";
  throw new Refusal(400, "invalid_request", `${field}: ${issue.message.replace(/^Invalid input: /, "")}`);
}

function json(status: number, body: unknown): IdentityResponse {
  return { status, headers: JSON_HEADERS, body: JSON.stringify(body) };
}

/**
 * The request's context as a salted digest: recorded, never raw (it may hold
 * sensitive values), and not as a plain hash either, which anyone could
 * confirm a guess against (a ticket number, an amount).
 */
function sensitiveContext(salt: ProvenanceSalt, context: Record<string, unknown>) {
  return digestSensitive(salt.key, salt.id, { context: canonicalize(context) });
}

function contextOf(task: AgentTask): DelegationContext {
  return delegationContextOf(task, task.status?.delegationChain ?? []);
}
