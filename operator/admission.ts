// The admission side of the operator process: the HTTPS webhook (served by
// every replica, so the Service can balance and a standby answers at once)
// and its registration (written by the leader, which also keeps caBundle
// current). Wiring only: the decisions live in webhook/*.
import { ASSERTION_FIELD } from "../core/admission/assertion.ts";
import { createRecordVerifier, type RecordVerifier } from "../core/admission/record.ts";
import type { AgentTask } from "../core/api/v1alpha1.ts";
import { ValidationError } from "../core/errors.ts";
import type { KeyRing, Signer } from "../core/provenance/sign.ts";
import type { CertificateAuthority } from "../core/x509/index.ts";
import { type AdmissionServer, startAdmissionServer } from "../shells/https/admission-server.ts";
import { createCachedAccessReview } from "../shells/kube/authorization.ts";
import { isNotFound, type KubeRest } from "../shells/kube/rest.ts";
import type { Logger } from "../shells/log.ts";
import type { UserInfo } from "../webhook/admission.ts";
import { createAgentPolicyAdmission } from "../webhook/agentpolicy.ts";
import { type AgentTaskAdmissionDeps, createAgentTaskAdmission, type PodView } from "../webhook/agenttask.ts";
import { type AssertionVerifier, createAssertionVerifier } from "../webhook/assertions.ts";
import { JtiStore, ReplayError } from "../webhook/jti-store.ts";
import { createAdmissionLookups, SAR_CACHE_TTL_MS } from "../webhook/lookups.ts";
import { createPodAdmission } from "../webhook/pods.ts";
import {
  applyRegistration,
  type LabelSelector,
  patchCaBundle,
  removeRegistration,
} from "../webhook/registration.ts";
import { WebhookServingCert } from "../webhook/serving-cert.ts";
import { POD_CONTROLLER_USERNAMES, WORKLOAD_CONTROLLER_USERNAMES } from "../webhook/task-use.ts";
import { createWorkloadAdmission } from "../webhook/workloads.ts";
import type { OperatorConfig } from "./config.ts";

const enc = encodeURIComponent;

export interface AdmissionHandlersInput {
  rest: KubeRest;
  namespace: string;
  trustDomain: string;
  signer: Signer;
  keys: KeyRing;
  /** The operator informer's task cache. */
  cachedTask: (namespace: string, name: string) => AgentTask | undefined;
  /** Parsed issuers (loadAssertionIssuers); none configured → assertions are refused. */
  assertionIssuers: Parameters<typeof createAssertionVerifier>[0];
  recordMaxSkewMs: number;
  /** The operator's memoizing record verifier, shared so that a record is verified (and kept) once per process. */
  verifyRecord?: RecordVerifier;
  /** No AgentTask is admitted where pods are not checked. */
  excludedNamespaces: readonly string[];
  log: Logger;
  now?: () => number;
}

/** The three routes, composed from the handlers and their Kubernetes lookups. */
export function createAdmissionRoutes(input: AdmissionHandlersInput) {
  const { rest } = input;
  const now = input.now ?? Date.now;
  const lookups = createAdmissionLookups(rest, input.cachedTask);
  const verifier: AssertionVerifier | undefined =
    input.assertionIssuers.length > 0 ? createAssertionVerifier(input.assertionIssuers) : undefined;
  const jti = new JtiStore(rest, { namespace: input.namespace });
  const impersonationReview = createCachedAccessReview(rest, SAR_CACHE_TTL_MS);

  const agentTaskDeps: AgentTaskAdmissionDeps = {
    signer: input.signer,
    keys: input.keys,
    now,
    recordMaxSkewMs: input.recordMaxSkewMs,
    excludedNamespaces: new Set(input.excludedNamespaces),
    canImpersonate: async (user: UserInfo, d) => {
      if (d.kind === "AgentTask" || d.kind === "Workflow") return false;
      const resource = d.kind === "User" ? "users" : d.kind === "Group" ? "groups" : "serviceaccounts";
      return impersonationReview(user, {
        verb: "impersonate",
        group: "",
        resource,
        name: d.name,
        ...(d.kind === "ServiceAccount" && d.namespace ? { namespace: d.namespace } : {}),
      });
    },
    getPod: async (namespace, name) => {
      try {
        return await rest.get<PodView>(`/api/v1/namespaces/${enc(namespace)}/pods/${enc(name)}`);
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw err;
      }
    },
    getTask: lookups.getTask,
    ...(verifier
      ? {
          assertions: {
            verify: (token, ctx) => verifier.verify(token, { ...ctx, now: now() }),
          },
        }
      : {}),
    claimJti: async (issuer, id, acceptedUntil) => {
      try {
        await jti.claim({ issuer, jti: id, acceptedUntil });
      } catch (err) {
        if (err instanceof ReplayError) {
          throw new ValidationError(
            ASSERTION_FIELD,
            "replay",
            `${ASSERTION_FIELD}: ${err.message} (rule replay)`,
          );
        }
        throw err;
      }
    },
  };
  const identityDeps = {
    keys: input.keys,
    signer: input.signer,
    trustDomain: input.trustDomain,
    now,
    ...lookups,
    verifyRecordMaxSkewMs: input.recordMaxSkewMs,
    verifyRecord: input.verifyRecord ?? createRecordVerifier(input.keys, input.recordMaxSkewMs),
  };
  return {
    jti,
    routes: {
      "/admit/agenttasks": createAgentTaskAdmission(agentTaskDeps),
      "/admit/pods": createPodAdmission({ ...identityDeps, controllerUsernames: POD_CONTROLLER_USERNAMES }),
      "/admit/agentpolicies": createAgentPolicyAdmission(),
      "/admit/workloads": createWorkloadAdmission({
        ...identityDeps,
        controllerUsernames: WORKLOAD_CONTROLLER_USERNAMES,
      }),
    },
  };
}

export interface AdmissionWebhookInput extends AdmissionHandlersInput {
  ca: () => CertificateAuthority;
  /** PEM of the roots the API server must trust for the serving certificate. */
  caBundlePem: string;
  webhook: OperatorConfig["webhook"];
  metrics?: { admission(path: string, durationMs: number, allowed: boolean): void };
}

export interface AdmissionWebhook {
  readonly port: number;
  /** Writes (or refreshes) the registration; the leader calls it. */
  register(): Promise<void>;
  /** Removes the fail-closed registration (make run's exit; the chart keeps it). */
  unregister(): Promise<boolean>;
  /** Forgets assertion jtis whose assertions can no longer verify (leader, periodically). */
  sweepJtis(now: number): Promise<unknown>;
  close(): Promise<void>;
}

/** Serves the webhook over TLS with a rotating certificate from the Custody CA. */
export async function startAdmissionWebhook(input: AdmissionWebhookInput): Promise<AdmissionWebhook> {
  const { webhook, log } = input;
  const { routes, jti } = createAdmissionRoutes(input);
  let server: AdmissionServer | undefined;
  // The names the API server dials: the Service's (always in the SAN) and,
  // for an operator outside the cluster, the host of the configured URL.
  const isIp = (h: string) => /^[0-9.]+$/.test(h) || h.includes(":");
  const urlHost = webhook.url ? new URL(webhook.url).hostname.replace(/^\[|\]$/g, "") : undefined;
  const hosts = [urlHost, webhook.addr.host].filter((h): h is string => !!h && h !== "0.0.0.0" && h !== "::");
  const ipAddresses = [...new Set(hosts.filter(isIp))];
  const dnsNames = [...new Set(hosts.filter((h) => !isIp(h)))];
  const cert = new WebhookServingCert({
    ca: input.ca,
    service: { name: webhook.service.name, namespace: input.namespace },
    dnsNames,
    ipAddresses,
    onRotate: (c) => server?.setCertificate(c.certPem, c.keyPem),
    log: log.child("serving-cert"),
  });
  server = await startAdmissionServer({
    host: webhook.addr.host,
    port: webhook.addr.port,
    routes,
    tls: { certPem: cert.current.certPem, keyPem: cert.current.keyPem },
    log: log.child("server"),
    ...(input.metrics ? { observe: (p, ms, ok) => input.metrics!.admission(p, ms, ok) } : {}),
  });
  cert.start();
  const port = server.port;
  const clientConfig = webhook.url
    ? { url: webhook.url.replace(/:0(?=\/|$)/, `:${port}`) }
    : { service: { namespace: input.namespace, name: webhook.service.name, port: webhook.service.port } };
  let registered = false;
  log.info("admission webhook listening", { addr: `${webhook.addr.host}:${port}`, clientConfig });
  return {
    port,
    async register() {
      if (webhook.registration === "ca-bundle") {
        const found = await patchCaBundle(input.rest, webhook.configName, input.caBundlePem);
        if (!found)
          log.warn("admission webhook configuration not found; its caBundle cannot be kept current", {
            name: webhook.configName,
          });
        return;
      }
      await applyRegistration(input.rest, {
        name: webhook.configName,
        clientConfig,
        caBundlePem: input.caBundlePem,
        ...(webhook.namespaceSelector
          ? { namespaceSelector: webhook.namespaceSelector as LabelSelector }
          : {}),
        excludedNamespaces: webhook.excludedNamespaces,
      });
      if (registered) log.debug("admission webhooks re-applied", { name: webhook.configName });
      else log.info("admission webhooks registered", { name: webhook.configName });
      registered = true;
    },
    // Only what this process registered itself: a chart-owned registration is the chart's to remove.
    unregister: async () =>
      webhook.registration === "apply" ? removeRegistration(input.rest, webhook.configName) : false,
    sweepJtis: (now) => jti.sweepExpired(now),
    async close() {
      cert.stop();
      await server?.close();
    },
  };
}
