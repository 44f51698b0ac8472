// Operator settings from the environment (the chart sets them; `make run`
// uses the defaults). Bad values fail at start with the variable named.
import { z } from "zod";
import { DEFAULT_MAX_DEPTH, MAX_MAX_DEPTH } from "../core/chain.ts";
import { DEFAULT_TTL, parseTtl } from "../core/duration.ts";
import { checkSchedule, JWT_ALGORITHMS, type JwtAlgorithm, type KeySchedule } from "../core/jwt/keys.ts";
import { DEFAULT_JWT_TTL_MS, MAX_JWT_TTL_MS, MAX_OBO_TTL_MS, MIN_JWT_TTL_MS } from "../core/jwt/svid.ts";
import { DEFAULT_TRUST_DOMAIN, validateTrustDomain } from "../core/spiffe.ts";

const listenAddress = z
  .string()
  .regex(/^[^:\s]+:\d{1,5}$/, "must be host:port, e.g. 127.0.0.1:8081 (port 0 picks a free one)");

const schema = z.object({
  CUSTODY_TRUST_DOMAIN: z.string().default(DEFAULT_TRUST_DOMAIN),
  CUSTODY_NAMESPACE: z
    .string()
    .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, "must be a DNS label")
    .max(63)
    .default("custody-system"),
  CUSTODY_CA_SECRET: z.string().min(1).max(253).default("custody-ca"),
  CUSTODY_DEFAULT_TTL: z.string().default(DEFAULT_TTL),
  CUSTODY_WORKERS: z.coerce.number().int().min(1).max(512).default(64),
  /** Sub-agent hops below a root task (the status chain holds at most 32 links: 30 hops). */
  CUSTODY_MAX_CHAIN_DEPTH: z.coerce.number().int().min(1).max(MAX_MAX_DEPTH).default(DEFAULT_MAX_DEPTH),
  CUSTODY_HEALTH_ADDR: listenAddress.default("127.0.0.1:8081"),
  CUSTODY_KAFKA_BROKERS: z.string().min(1, "is required: host:port[,host:port]"),
  CUSTODY_KAFKA_TOPIC: z
    .string()
    .regex(/^[a-zA-Z0-9._-]{1,249}$/, "must be a valid Kafka topic name")
    .default("custody.provenance"),
  CUSTODY_KAFKA_PARTITIONS: z.coerce.number().int().min(1).max(1000).default(6),
  CUSTODY_KAFKA_REPLICATION: z.coerce.number().int().min(1).max(7).default(1),
  CUSTODY_LOG_LEVEL: z.enum(["debug", "info", "warn", "error"]).default("info"),
  CUSTODY_RENEW_JITTER: z.coerce.number().min(0).max(0.2).default(0.05),
  CUSTODY_IDENTITY: z.string().min(1).max(253).optional(),
  CUSTODY_LEADER_ELECTION: z.enum(["true", "false"]).default("true"),
  CUSTODY_LEASE_NAME: z.string().min(1).max(253).default("custody-operator"),
  // Failover within lease + retry (about 9 s) after a leader dies.
  CUSTODY_LEASE_DURATION_SECONDS: z.coerce.number().int().min(2).max(300).default(8),
  CUSTODY_RENEW_DEADLINE_SECONDS: z.coerce.number().int().min(1).max(299).default(5),
  CUSTODY_RETRY_PERIOD_SECONDS: z.coerce.number().int().min(1).max(60).default(1),
  // Admission webhook (served by every replica; registered by the leader).
  CUSTODY_WEBHOOK_ADDR: listenAddress.default("127.0.0.1:8443"),
  /** Register with clientConfig.url (an operator outside the cluster, as in `make run`). */
  CUSTODY_WEBHOOK_URL: z
    .url({ protocol: /^https$/, error: "must be an https:// URL, e.g. https://127.0.0.1:8443" })
    .optional(),
  /** Otherwise register through this Service in CUSTODY_NAMESPACE. */
  CUSTODY_WEBHOOK_SERVICE: z
    .string()
    .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, "must be a DNS label")
    .default("custody-webhook"),
  CUSTODY_WEBHOOK_SERVICE_PORT: z.coerce.number().int().min(1).max(65535).default(443),
  CUSTODY_WEBHOOK_CONFIG_NAME: z
    .string()
    .regex(/^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$/, "must be a DNS subdomain")
    .default("custody"),
  /** A JSON label selector limiting every webhook to matching namespaces (several installations side by side, tests). */
  CUSTODY_WEBHOOK_NAMESPACE_SELECTOR: z.string().optional(),
  /**
   * apply: the operator writes the whole registration (make run, tests);
   * ca-bundle: another tool owns it (the Helm chart, so that uninstalling
   * removes it) and the operator only keeps its caBundle current.
   */
  CUSTODY_WEBHOOK_REGISTRATION: z.enum(["apply", "ca-bundle"]).default("apply"),
  /** Remove the fail-closed registrations when this process stops (make run: the shared local cluster stays usable). */
  CUSTODY_WEBHOOK_REMOVE_ON_EXIT: z.enum(["true", "false"]).default("false"),
  /** Namespaces whose pods and workloads are never injected. */
  CUSTODY_EXCLUDED_NAMESPACES: z.string().default("kube-system"),
  /** How often the leader anchors a signed checkpoint of its stream head (when it moved). */
  CUSTODY_CHECKPOINT_INTERVAL_SECONDS: z.coerce.number().int().min(1).max(3600).default(10),
  /** Tests only: exit at this point of the issuance seam (after-issued-ack), to prove crash recovery. */
  CUSTODY_FAILPOINT: z.enum(["after-issued-ack"]).optional(),
  CUSTODY_RECORD_MAX_SKEW_SECONDS: z.coerce.number().int().min(1).max(60).default(5),
  // JWT-SVIDs, token exchange, OIDC discovery (docs/jwt-svid.md).
  CUSTODY_JWT_ALG: z.enum(JWT_ALGORITHMS).default("ES256"),
  CUSTODY_JWT_SVID_TTL_SECONDS: z.coerce
    .number()
    .int()
    .min(MIN_JWT_TTL_MS / 1000)
    .max(MAX_JWT_TTL_MS / 1000)
    .default(DEFAULT_JWT_TTL_MS / 1000),
  CUSTODY_JWT_KEY_ROTATION_SECONDS: z.coerce
    .number()
    .int()
    .min(10)
    .max(90 * 86_400)
    .default(86_400),
  /** How long a new key is published before it signs (relying parties refresh the JWKS in between). */
  CUSTODY_JWT_KEY_PUBLISH_AHEAD_SECONDS: z.coerce
    .number()
    .int()
    .min(2)
    .max(7 * 86_400)
    .default(1800),
  /** The identity endpoint (discovery, JWKS, token exchange), served over HTTPS by every replica. */
  CUSTODY_OIDC_ADDR: listenAddress.default("127.0.0.1:8444"),
  /** The issuer URL tokens name and relying parties fetch discovery from; default https://<CUSTODY_OIDC_ADDR>. */
  CUSTODY_OIDC_ISSUER: z
    .url({ protocol: /^https$/, error: "must be an https:// URL, e.g. https://custody.example.com" })
    .refine((u) => !u.includes("?") && !u.includes("#"), "must have no query or fragment")
    .optional(),
  /** Extra DNS names for the identity endpoint's serving certificate (minted from the Custody CA). */
  CUSTODY_OIDC_DNS_NAMES: z.string().default(""),
  /** Where agents reach token exchange when not at the issuer (e.g. the issuer is a public proxy). */
  CUSTODY_OIDC_TOKEN_ENDPOINT: z.url({ protocol: /^https$/, error: "must be an https:// URL" }).optional(),
  /** A serving certificate of your own (PEM) instead of one minted from the Custody CA; both or neither. */
  CUSTODY_OIDC_TLS_CERT_FILE: z.string().min(1).optional(),
  CUSTODY_OIDC_TLS_KEY_FILE: z.string().min(1).optional(),
  /** With no AgentPolicy or ClusterAgentPolicy in force: allow within the task's scope, or deny. */
  CUSTODY_POLICY_DEFAULT: z.enum(["allow", "deny"]).default("allow"),
  /** Wall time one policy's rules may take per decision; past it the policy denies. */
  CUSTODY_POLICY_BUDGET_MS: z.coerce.number().min(0.1).max(1000).default(20),
  /** Who may ask the decision endpoint about agents: Kubernetes usernames (e.g. system:serviceaccount:gw:gateway), comma-separated. */
  CUSTODY_AUTHZEN_CALLERS: z.string().default(""),
  /** Reports of what was done, per agent per second (a burst of ten times that). */
  CUSTODY_REPORTS_PER_SECOND: z.coerce.number().min(0.1).max(10_000).default(10),
  /** The Service that fronts the identity endpoint (its names go into the serving certificate). */
  CUSTODY_OIDC_SERVICE: z
    .string()
    .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, "must be a DNS label")
    .default("custody-identity"),
});

export interface OperatorConfig {
  trustDomain: string;
  namespace: string;
  caSecretName: string;
  defaultTtl: string;
  workers: number;
  /** Sub-agent hops allowed below a root task. */
  maxChainDepth: number;
  healthAddr: { host: string; port: number };
  kafka: { brokers: string[]; topic: string; partitions: number; replicationFactor: number };
  logLevel: "debug" | "info" | "warn" | "error";
  renewJitter: number;
  /** This replica's name (pod name in the chart, hostname-pid locally). */
  identity: string | undefined;
  leaderElection: boolean;
  leaseName: string;
  leaseDurationMs: number;
  renewDeadlineMs: number;
  retryPeriodMs: number;
  webhook: {
    addr: { host: string; port: number };
    url: string | undefined;
    service: { name: string; port: number };
    configName: string;
    namespaceSelector: Record<string, unknown> | undefined;
    removeOnExit: boolean;
    registration: "apply" | "ca-bundle";
    excludedNamespaces: string[];
  };
  recordMaxSkewMs: number;
  checkpointIntervalMs: number;
  failpoint: "after-issued-ack" | undefined;
  policy: {
    defaultDecision: "allow" | "deny";
    budgetMs: number;
    /** Kubernetes usernames allowed to call the decision endpoint about agents (resource servers, gateways). */
    authzenCallers: string[];
    reportsPerSecond: number;
  };
  jwt: {
    alg: JwtAlgorithm;
    ttlMs: number;
    schedule: KeySchedule;
    /** Cache-Control max-age of the JWKS and the SPIFFE bundle's refresh hint. */
    jwksMaxAgeSeconds: number;
  };
  oidc: {
    addr: { host: string; port: number };
    issuer: string;
    tokenEndpoint: string | undefined;
    tlsFiles: { certFile: string; keyFile: string } | undefined;
    dnsNames: string[];
    service: string;
  };
}

export function loadOperatorConfig(env: NodeJS.ProcessEnv = process.env): OperatorConfig {
  const parsed = schema.safeParse(env);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`);
    throw new Error(`invalid operator configuration:\n  ${lines.join("\n  ")}`);
  }
  const c = parsed.data;
  validateTrustDomain(c.CUSTODY_TRUST_DOMAIN, "CUSTODY_TRUST_DOMAIN");
  parseTtl(c.CUSTODY_DEFAULT_TTL, "CUSTODY_DEFAULT_TTL");
  const [host, port] = splitHostPort(c.CUSTODY_HEALTH_ADDR);
  const [webhookHost, webhookPort] = splitHostPort(c.CUSTODY_WEBHOOK_ADDR);
  const [oidcHost, oidcPort] = splitHostPort(c.CUSTODY_OIDC_ADDR);
  if (oidcPort === 0 && c.CUSTODY_OIDC_ISSUER === undefined) {
    throw new Error(
      "invalid operator configuration:\n  CUSTODY_OIDC_ISSUER: is required when CUSTODY_OIDC_ADDR picks a free port (:0): tokens name the issuer before the port is known",
    );
  }
  return {
    trustDomain: c.CUSTODY_TRUST_DOMAIN,
    namespace: c.CUSTODY_NAMESPACE,
    caSecretName: c.CUSTODY_CA_SECRET,
    defaultTtl: c.CUSTODY_DEFAULT_TTL,
    workers: c.CUSTODY_WORKERS,
    maxChainDepth: c.CUSTODY_MAX_CHAIN_DEPTH,
    healthAddr: { host, port },
    kafka: {
      brokers: c.CUSTODY_KAFKA_BROKERS.split(",")
        .map((s) => s.trim())
        .filter(Boolean),
      topic: c.CUSTODY_KAFKA_TOPIC,
      partitions: c.CUSTODY_KAFKA_PARTITIONS,
      replicationFactor: c.CUSTODY_KAFKA_REPLICATION,
    },
    logLevel: c.CUSTODY_LOG_LEVEL,
    renewJitter: c.CUSTODY_RENEW_JITTER,
    identity: c.CUSTODY_IDENTITY,
    leaderElection: c.CUSTODY_LEADER_ELECTION === "true",
    leaseName: c.CUSTODY_LEASE_NAME,
    leaseDurationMs: c.CUSTODY_LEASE_DURATION_SECONDS * 1000,
    renewDeadlineMs: c.CUSTODY_RENEW_DEADLINE_SECONDS * 1000,
    retryPeriodMs: c.CUSTODY_RETRY_PERIOD_SECONDS * 1000,
    webhook: {
      addr: { host: webhookHost, port: webhookPort },
      url: c.CUSTODY_WEBHOOK_URL,
      service: { name: c.CUSTODY_WEBHOOK_SERVICE, port: c.CUSTODY_WEBHOOK_SERVICE_PORT },
      configName: c.CUSTODY_WEBHOOK_CONFIG_NAME,
      namespaceSelector: jsonObject(
        c.CUSTODY_WEBHOOK_NAMESPACE_SELECTOR,
        "CUSTODY_WEBHOOK_NAMESPACE_SELECTOR",
      ),
      removeOnExit: c.CUSTODY_WEBHOOK_REMOVE_ON_EXIT === "true",
      registration: c.CUSTODY_WEBHOOK_REGISTRATION,
      excludedNamespaces: c.CUSTODY_EXCLUDED_NAMESPACES.split(",")
        .map((s) => s.trim())
        .filter(Boolean),
    },
    recordMaxSkewMs: c.CUSTODY_RECORD_MAX_SKEW_SECONDS * 1000,
    checkpointIntervalMs: c.CUSTODY_CHECKPOINT_INTERVAL_SECONDS * 1000,
    failpoint: c.CUSTODY_FAILPOINT,
    jwt: jwtSettings(c),
    policy: {
      defaultDecision: c.CUSTODY_POLICY_DEFAULT,
      budgetMs: c.CUSTODY_POLICY_BUDGET_MS,
      authzenCallers: c.CUSTODY_AUTHZEN_CALLERS.split(",")
        .map((s) => s.trim())
        .filter(Boolean),
      reportsPerSecond: c.CUSTODY_REPORTS_PER_SECOND,
    },
    oidc: {
      addr: { host: oidcHost, port: oidcPort },
      issuer: (c.CUSTODY_OIDC_ISSUER ?? `https://${c.CUSTODY_OIDC_ADDR}`).replace(/\/+$/, ""),
      dnsNames: c.CUSTODY_OIDC_DNS_NAMES.split(",")
        .map((s) => s.trim())
        .filter(Boolean),
      service: c.CUSTODY_OIDC_SERVICE,
      tokenEndpoint: c.CUSTODY_OIDC_TOKEN_ENDPOINT,
      tlsFiles: tlsFilesOf(c.CUSTODY_OIDC_TLS_CERT_FILE, c.CUSTODY_OIDC_TLS_KEY_FILE),
    },
  };
}

function tlsFilesOf(certFile: string | undefined, keyFile: string | undefined) {
  if ((certFile === undefined) !== (keyFile === undefined)) {
    throw new Error(
      "invalid operator configuration:\n  CUSTODY_OIDC_TLS_CERT_FILE: must be set together with CUSTODY_OIDC_TLS_KEY_FILE",
    );
  }
  return certFile && keyFile ? { certFile, keyFile } : undefined;
}

function jwtSettings(c: z.output<typeof schema>): OperatorConfig["jwt"] {
  const ttlMs = c.CUSTODY_JWT_SVID_TTL_SECONDS * 1000;
  const publishAheadMs = c.CUSTODY_JWT_KEY_PUBLISH_AHEAD_SECONDS * 1000;
  const schedule: KeySchedule = {
    rotationPeriodMs: c.CUSTODY_JWT_KEY_ROTATION_SECONDS * 1000,
    publishAheadMs,
    // A retired key outlives every token it signed (JWT-SVIDs and on-behalf-of
    // tokens), plus a minute of clock skew.
    retentionMs: Math.max(ttlMs, MAX_OBO_TTL_MS) + 60_000,
  };
  try {
    checkSchedule(schedule);
  } catch (err) {
    // rotationPeriod: longer than publish-ahead, and short enough a ring (retention / period) to store.
    throw new Error(
      `invalid operator configuration:\n  CUSTODY_JWT_KEY_ROTATION_SECONDS: ${(err as Error).message.replace(/^rotationPeriod: /, "")}`,
    );
  }
  // Relying parties refresh at least twice while a new key waits to sign.
  const jwksMaxAgeSeconds = Math.max(1, Math.min(300, Math.floor(publishAheadMs / 2000)));
  return { alg: c.CUSTODY_JWT_ALG, ttlMs, schedule, jwksMaxAgeSeconds };
}

function jsonValue(text: string | undefined, name: string): unknown {
  if (text === undefined || text.trim() === "") return undefined;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`invalid operator configuration:\n  ${name}: must be JSON (${(err as Error).message})`);
  }
}

function jsonObject(text: string | undefined, name: string): Record<string, unknown> | undefined {
  const v = jsonValue(text, name);
  if (v === undefined) return undefined;
  if (v === null || typeof v !== "object" || Array.isArray(v))
    throw new Error(`invalid operator configuration:\n  ${name}: must be a JSON object`);
  return v as Record<string, unknown>;
}

function splitHostPort(addr: string): [string, number] {
  const i = addr.lastIndexOf(":");
  return [addr.slice(0, i), Number(addr.slice(i + 1))];
}
