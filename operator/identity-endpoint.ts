// The identity endpoint: OIDC discovery and the JWKS for relying parties,
// token exchange (RFC 8693) for agents. Served by every replica; each
// replica records its exchanges on a stream of its own (one writer per
// stream), and answers only once the event is acknowledged.
import { createHash, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import type { AgentTask } from "../core/api/v1alpha1.ts";
import { delegationContextOf } from "../core/delegation.ts";
import {
  DISCOVERY_PATH,
  discoveryDocument,
  JWKS_PATH,
  jwksDocument,
  TOKEN_PATH,
} from "../core/jwt/discovery.ts";
import {
  ACCESS_TOKEN_TYPE,
  decideExchange,
  ExchangeError,
  parseExchangeRequest,
  signOboToken,
  subjectOf,
  type TaskFacts,
  type VerifiedClient,
  type VerifiedSubject,
  verifySubjectToken,
} from "../core/jwt/exchange.ts";
import type { JwtKey } from "../core/jwt/keys.ts";
import type { DelegationContext } from "../core/provenance/events.ts";
import { parseTaskSpiffeId } from "../core/spiffe.ts";
import type { CertificateAuthority } from "../core/x509/index.ts";
import {
  type IdentityHandler,
  type IdentityRequest,
  type IdentityResponse,
  type IdentityServer,
  startIdentityServer,
} from "../shells/https/identity-server.ts";
import type { Logger } from "../shells/log.ts";
import { fullBucket, takeToken } from "../shells/token-bucket.ts";
import { WebhookServingCert } from "../webhook/serving-cert.ts";
import { type ProvenanceRecorder, recordWithin } from "./provenance.ts";
import { createSvidVerifier } from "./svid-verifier.ts";
import { currentSerials, isDeleting } from "./task-reconciler.ts";

export interface IdentityEndpointDeps {
  issuer: string;
  /** Where agents reach the token endpoint, when not at the issuer (discovery says so). */
  tokenEndpoint?: string;
  trustDomain: string;
  keys: {
    published(): JwtKey[];
    signing(): JwtKey | undefined;
  };
  /** DER of the CA certificates an agent's X.509-SVID must chain to. */
  trustAnchorsDer: () => readonly Uint8Array[];
  getTask: (key: string) => AgentTask | undefined;
  /** Records an exchange event; resolves once Kafka acknowledged it. */
  recorder: () => Promise<Pick<ProvenanceRecorder, "record">>;
  /** More routes on the same listener (the decision endpoint); undefined when a path is not theirs. */
  next?: (req: IdentityRequest) => Promise<IdentityResponse | undefined>;
  /** Cache-Control max-age of the JWKS: shorter than the time a new key is published before it signs. */
  jwksMaxAgeSeconds: number;
  /** How long an answer may wait for its event's acknowledgement before it fails closed. */
  recordTimeoutMs?: number;
  /** Refusals without an authenticated client recorded per second at most (the rest only counted). */
  anonymousRefusalsPerSecond?: number;
  log: Logger;
  now?: () => number;
}

const JSON_TYPE = "application/json";
const NO_STORE = { "content-type": JSON_TYPE, "cache-control": "no-store", pragma: "no-cache" };

export function createIdentityHandler(
  deps: IdentityEndpointDeps,
): IdentityHandler & { dropped: () => number } {
  const now = deps.now ?? Date.now;
  const recordTimeoutMs = deps.recordTimeoutMs ?? 5_000;
  const discovery = JSON.stringify(discoveryDocument(deps.issuer, deps.tokenEndpoint));
  // An issuer with a path (https://id.example.com/custody) serves under it; the bare paths work too.
  const prefix = new URL(deps.issuer).pathname.replace(/\/+$/, "");
  const local = (path: string) =>
    prefix && path.startsWith(`${prefix}/`) ? path.slice(prefix.length) : path;
  let dropped = 0;
  const refusalRate = deps.anonymousRefusalsPerSecond ?? 20;
  const bucket = fullBucket(refusalRate, now());

  const json = (status: number, body: unknown, headers: Record<string, string>): IdentityResponse => ({
    status,
    headers,
    body: JSON.stringify(body),
  });

  async function handle(request: IdentityRequest): Promise<IdentityResponse> {
    const req = { ...request, path: local(request.path) };
    if (req.path === DISCOVERY_PATH || req.path === JWKS_PATH) {
      if (req.method !== "GET" && req.method !== "HEAD") {
        return json(405, { error: "method_not_allowed" }, { "content-type": JSON_TYPE, allow: "GET" });
      }
      if (req.path === DISCOVERY_PATH) {
        return {
          status: 200,
          headers: { "content-type": JSON_TYPE, "cache-control": "public, max-age=3600" },
          body: discovery,
        };
      }
      const body = JSON.stringify(jwksDocument(deps.keys.published()));
      const etag = `"${createHash("sha256").update(body).digest("base64url").slice(0, 22)}"`;
      const headers = {
        "content-type": "application/jwk-set+json",
        "cache-control": `public, max-age=${deps.jwksMaxAgeSeconds}, must-revalidate`,
        etag,
      };
      if (req.headers["if-none-match"] === etag) return { status: 304, headers, body: "" };
      return { status: 200, headers, body };
    }
    if (req.path !== TOKEN_PATH) {
      const other = await deps.next?.(req);
      return other ?? json(404, { error: "not_found" }, { "content-type": JSON_TYPE });
    }
    if (req.method !== "POST") {
      return json(
        405,
        { error: "invalid_request", error_description: "use POST" },
        { ...NO_STORE, allow: "POST" },
      );
    }
    return exchange(req);
  }

  async function exchange(req: IdentityRequest): Promise<IdentityResponse> {
    const t = now();
    let client: VerifiedClient | undefined;
    let subject: VerifiedSubject | undefined;
    let task: AgentTask | undefined;
    let audience: string | undefined;
    let subjectToken: string | undefined;
    try {
      client = authenticateClient(req, t);
      if (!req.contentType.toLowerCase().startsWith("application/x-www-form-urlencoded")) {
        throw new ExchangeError("invalid_request", "the body must be application/x-www-form-urlencoded");
      }
      const form = new URLSearchParams(req.body.toString("utf8"));
      subjectToken = form.get("subject_token") ?? undefined;
      audience = form.get("audience") ?? undefined;
      const request = parseExchangeRequest(form);
      const published = deps.keys.published();
      subject = await verifySubjectToken(request.subjectToken, {
        issuer: deps.issuer,
        keyFor: (kid) => published.find((k) => k.kid === kid),
        algorithms: [...new Set(published.map((k) => k.alg))],
        now: t,
      });
      task = taskOf(subject.sub);
      const facts = task && { ...factsOf(task, t), ...ancestorsOf(task, subject) };
      const grant = decideExchange({ subject, client, task: facts, request, now: t });
      const key = deps.keys.signing();
      if (!key) throw new ExchangeError("temporarily_unavailable", "no signing key is loaded yet");
      const jti = randomUUID();
      const accessToken = await signOboToken(key, {
        issuer: deps.issuer,
        grant,
        jti,
        custody: subject.custody,
      });
      const context = contextOf(task!, subject);
      await record(
        "dev.custody.task.token.exchanged",
        subject.sub,
        {
          context,
          audience: grant.audience,
          scope: [...grant.scope],
          jti,
          kid: key.kid,
          expiresAt: new Date(grant.expiresAt).toISOString(),
          subject: subjectOf(grant.subject).slice(0, 640),
          actors: [...grant.actors],
          client: { spiffeId: client.spiffeId, serial: client.serialHex },
          subjectTokenJti: subject.jti,
        },
        context.rootUid,
      ).catch((err: unknown) => {
        deps.log.warn("token exchange not recorded: refused", {
          error: err instanceof Error ? err.message : String(err),
        });
        throw new ExchangeError(
          "temporarily_unavailable",
          "the exchange could not be recorded; no token is issued without its provenance",
        );
      });
      return json(
        200,
        {
          access_token: accessToken,
          issued_token_type: ACCESS_TOKEN_TYPE,
          token_type: "Bearer",
          expires_in: Math.max(1, Math.floor((grant.expiresAt - t) / 1000)),
          scope: grant.scope.join(" "),
        },
        NO_STORE,
      );
    } catch (err) {
      // A fault is refused and recorded like any refusal (never an unrecorded 500 with a stack).
      const refusal =
        err instanceof ExchangeError
          ? err
          : new ExchangeError("server_error", "the exchange failed inside Custody");
      if (!(err instanceof ExchangeError)) {
        deps.log.error("token exchange failed", { error: err instanceof Error ? err.message : String(err) });
      }
      await recordRefusal(refusal, { client, subject, task, audience, subjectToken });

      const headers: Record<string, string> = { ...NO_STORE };
      if (refusal.status === 401) headers["www-authenticate"] = 'Mutual-TLS realm="custody"';
      return json(refusal.status, { error: refusal.error, error_description: refusal.message }, headers);
    }
  }

  const verifySvidOf = createSvidVerifier(deps.trustAnchorsDer, deps.trustDomain);

  function authenticateClient(req: IdentityRequest, t: number): VerifiedClient {
    if (req.peerRejected) {
      throw new ExchangeError(
        "invalid_client",
        `the client certificate was not accepted (${req.peerError ?? "it does not chain to Custody's CA"})`,
      );
    }
    if (!req.peer) {
      throw new ExchangeError("invalid_client", "a client certificate (the agent's X.509-SVID) is required");
    }
    const check = verifySvidOf(req.peer.der, req.peer.intermediates, t);
    if (check.ok) return { spiffeId: check.spiffeId, serialHex: check.serialHex };
    throw new ExchangeError(
      "invalid_client",
      check.kind === "trust-domain"
        ? "the client certificate is from another trust domain"
        : `the client certificate is not a valid X.509-SVID: ${check.message}`.slice(0, 512),
    );
  }

  /** The agents above the task, as its token names them, must still hold their delegation. */
  function ancestorsOf(task: AgentTask, subject: VerifiedSubject): { ancestorProblem?: string } {
    const names = subject.custody.chain.filter((h) => h.kind === "agent").map((h) => h.name);
    const problem = ancestorProblem(task, names.slice(0, -1), deps.getTask);
    return problem ? { ancestorProblem: problem } : {};
  }

  function taskOf(spiffeId: string): AgentTask | undefined {
    return taskOfSpiffeId(spiffeId, deps.trustDomain, deps.getTask);
  }

  function record(...args: Parameters<ProvenanceRecorder["record"]>): Promise<void> {
    return recordWithin(deps.recorder, recordTimeoutMs, ...args);
  }

  async function recordRefusal(
    err: ExchangeError,
    seen: {
      client: VerifiedClient | undefined;
      subject: VerifiedSubject | undefined;
      task: AgentTask | undefined;
      audience: string | undefined;
      subjectToken: string | undefined;
    },
  ): Promise<void> {
    // The stream is what failed: recording that would only wait for it again.
    if (err.error === "temporarily_unavailable") return;
    if (!seen.client) {
      // Anyone can reach the endpoint: refusals of unauthenticated callers are
      // rate-limited, so they cannot flood the provenance stream.
      if (!takeToken(bucket, refusalRate, refusalRate, now())) {
        dropped++;
        // Counted, and said in the log now and then: a flood is visible even though it is not streamed.
        if (dropped % 100 === 1) {
          deps.log.warn("refusals of unauthenticated callers not recorded (rate limit)", { dropped });
        }
        return;
      }
    }
    const context =
      seen.task && seen.subject && seen.task.metadata.uid === seen.subject.custody.taskUid
        ? contextOf(seen.task, seen.subject)
        : undefined;
    try {
      await record(
        "dev.custody.task.token.refused",
        seen.subject?.sub ?? seen.client?.spiffeId ?? "token-endpoint",
        {
          ...(context ? { context } : {}),
          error: err.error,
          description: err.message.slice(0, 1024),
          ...(seen.audience ? { audience: seen.audience.slice(0, 256) } : {}),
          ...(seen.client
            ? { client: { spiffeId: seen.client.spiffeId, serial: seen.client.serialHex } }
            : {}),
          ...(seen.subjectToken
            ? { subjectTokenSha256: createHash("sha256").update(seen.subjectToken).digest("hex") }
            : {}),
        },
        context?.rootUid ?? seen.client?.spiffeId ?? "token-endpoint",
      );
    } catch (e) {
      deps.log.warn("token exchange refusal not recorded", {
        error: e instanceof Error ? e.message : String(e),
      });
    }
  }

  return Object.assign(handle, { dropped: () => dropped });
}

function factsOf(task: AgentTask, t: number): TaskFacts {
  const s = task.status;
  return {
    uid: task.metadata.uid ?? "",
    spiffeId: s?.spiffeID,
    phase: s?.phase,
    revoked: task.spec.revoked === true,
    deleting: isDeleting(task),
    audiences: task.spec.audiences ?? [],
    // What the credential carries: policy may have dropped grants.
    scope: s?.grantedScope ?? task.spec.scope,
    liveSerials: currentSerials(task, t),
    certificateNotAfter: s?.certificate ? Date.parse(s.certificate.notAfter) : undefined,
    deadline: task.spec.deadline ? Date.parse(task.spec.deadline) : undefined,
  };
}

/** Where an exchange sits in the delegation graph: the task's chain, as its token states it. */
function contextOf(task: AgentTask, subject: VerifiedSubject): DelegationContext {
  return delegationContextOf(task, task.status?.delegationChain ?? [], subject.custody.chainDigest);
}

// ---------------------------------------------------------------- serving

export interface StartIdentityEndpointOptions extends Omit<IdentityEndpointDeps, "recorder" | "next"> {
  /** The decision endpoint, given this process's stream to record on. */
  authzen?: (recorder: () => Promise<ProvenanceRecorder>) => IdentityEndpointDeps["next"];
  addr: { host: string; port: number };
  /** The Service that fronts the endpoint in the cluster, and more names for its serving certificate. */
  service: { name: string; namespace: string };
  dnsNames: readonly string[];
  ca: () => CertificateAuthority;
  trustAnchorsPem: string;
  /** Opens this process's own exchange stream (called on first use, again after a failure). */
  openRecorder: () => Promise<ProvenanceRecorder>;
  /**
   * A serving certificate and key of the platform's own (PEM files, e.g. a
   * public certificate for the issuer's host), re-read when they change;
   * otherwise one is minted from the Custody CA and renewed at half-life.
   */
  tlsFiles?: { certFile: string; keyFile: string };
}

export interface IdentityEndpoint {
  readonly port: number;
  /** The last acknowledged event of this process's exchange stream (for checkpoints). */
  ackedHead(): ProvenanceRecorder["ackedHead"];
  close(): Promise<void>;
}

export async function startIdentityEndpoint(opts: StartIdentityEndpointOptions): Promise<IdentityEndpoint> {
  const issuerHost = new URL(opts.issuer).hostname.replace(/^\[|\]$/g, "");
  const isIp = isIP(issuerHost) !== 0;
  const cert = new WebhookServingCert({
    ca: opts.ca,
    service: opts.service,
    dnsNames: [...opts.dnsNames, ...(isIp ? [] : [issuerHost]), "localhost"],
    ipAddresses: ["127.0.0.1", ...(isIp ? [issuerHost] : [])],
    onRotate: (c) => server?.setCertificate({ certPem: c.certPem, keyPem: c.keyPem }),
    log: opts.log.child("serving-cert"),
  });
  // One stream per process, opened when the first exchange needs it.
  let recorder: Promise<ProvenanceRecorder> | undefined;
  const openRecorder = () => {
    recorder ??= opts.openRecorder().catch((err: unknown) => {
      recorder = undefined;
      throw err;
    });
    return recorder;
  };
  const next = opts.authzen?.(openRecorder);
  const handler = createIdentityHandler({ ...opts, recorder: openRecorder, ...(next ? { next } : {}) });
  const readFiles = () =>
    opts.tlsFiles
      ? {
          certPem: readFileSync(opts.tlsFiles.certFile, "utf8"),
          keyPem: readFileSync(opts.tlsFiles.keyFile, "utf8"),
        }
      : undefined;
  let fromFiles = readFiles();
  let server: IdentityServer | undefined;
  server = await startIdentityServer({
    host: opts.addr.host,
    port: opts.addr.port,
    tls: fromFiles ?? { certPem: cert.current.certPem, keyPem: cert.current.keyPem },
    clientCaPem: opts.trustAnchorsPem,
    handler,
    log: opts.log,
  });
  let reload: NodeJS.Timeout | undefined;
  if (fromFiles) {
    reload = setInterval(() => {
      try {
        const next = readFiles()!;
        if (next.certPem === fromFiles!.certPem && next.keyPem === fromFiles!.keyPem) return;
        server?.setCertificate(next);
        fromFiles = next;
        opts.log.info("identity endpoint serving certificate reloaded from its files");
      } catch (err) {
        opts.log.warn("identity endpoint serving certificate not reloaded", {
          error: (err as Error).message,
        });
      }
    }, 60_000);
    reload.unref();
  } else {
    cert.start();
  }
  let opened: ProvenanceRecorder | undefined;
  return {
    port: server.port,
    ackedHead: () => {
      if (!opened && recorder)
        void recorder.then(
          (r) => (opened = r),
          () => undefined,
        );
      return opened?.ackedHead;
    },
    close: async () => {
      if (reload) clearInterval(reload);
      cert.stop();
      await server?.close();
      if (recorder) await (await recorder.catch(() => undefined))?.close();
    },
  };
}

/**
 * Why the agents above a task no longer hold their delegation, if they do
 * not: one is gone, revoked, being deleted or not Issued. Checked on every
 * exchange and decision, so revoking an ancestor stops its descendants at
 * once, before the cascade reaches them.
 */
export function ancestorProblem(
  task: AgentTask,
  ancestorNames: readonly string[],
  getTask: (key: string) => AgentTask | undefined,
): string | undefined {
  const ns = task.metadata.namespace ?? "";
  for (const name of ancestorNames) {
    const a = getTask(`${ns}/${name}`);
    if (!a) return `ancestor ${name} no longer exists`;
    if (a.spec.revoked === true || a.status?.phase === "Revoked") return `ancestor ${name} is revoked`;
    if (isDeleting(a)) return `ancestor ${name} is being deleted`;
    if (a.status?.phase !== "Issued") return `ancestor ${name} is ${a.status?.phase ?? "not issued"}`;
  }
  return undefined;
}

/**
 * The task a SPIFFE ID names, if this trust domain's and the task of that
 * name is still that agent's (a task re-created for another agent is not it).
 */
export function taskOfSpiffeId(
  spiffeId: string,
  trustDomain: string,
  getTask: (key: string) => AgentTask | undefined,
): AgentTask | undefined {
  try {
    const id = parseTaskSpiffeId(spiffeId, "spiffeId");
    if (id.trustDomain !== trustDomain) return undefined;
    const task = getTask(`${id.namespace}/${id.task}`);
    return task && task.spec.agent.name === id.agent ? task : undefined;
  } catch {
    return undefined;
  }
}
