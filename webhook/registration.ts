// Custody's MutatingWebhookConfiguration: what the API server sends to the
// admission server, and how it reaches it. Applied with server-side apply
// (field manager "custody-operator", forced), so re-applying is idempotent
// and applying with a new caBundle after a CA rotation updates it in place.
//
// Every webhook is failurePolicy Fail, and why differs per webhook:
//  - agenttasks: the webhook records the proven requester; a task admitted
//    without it would carry no proof, so no task may skip it (no namespace is
//    excluded; only the namespaceSelector option, meant for scoping a test
//    installation, narrows it).
//  - pods: a pod that opts in (label custody.dev/agent-task) and skipped the
//    webhook would run without the checks on who may wear the identity.
//  - workloads: the stamp on a Deployment/Job/... is what lets its
//    controller-created pods in; an unstamped workload's pods are refused.
// Pods and workloads only match objects carrying the opt-in label, so an
// unavailable webhook blocks only opted-in objects, never the rest of the
// cluster; excludedNamespaces (kube-system by default) keep the control
// plane's own namespaces out of reach entirely.
import { MANAGED_BY, MANAGED_BY_LABEL, TASK_LABEL } from "../core/names.ts";
import { fromPem } from "../core/x509/pem.ts";
import { isNotFound, type KubeRest } from "../shells/kube/rest.ts";

export const AGENTTASKS_PATH = "/admit/agenttasks";
export const PODS_PATH = "/admit/pods";
export const WORKLOADS_PATH = "/admit/workloads";
export const POLICIES_PATH = "/admit/agentpolicies";

export const AGENTTASKS_WEBHOOK = "agenttasks.custody.dev";
export const PODS_WEBHOOK = "pods.custody.dev";
export const WORKLOADS_WEBHOOK = "workloads.custody.dev";
export const POLICIES_WEBHOOK = "agentpolicies.custody.dev";

export const DEFAULT_REGISTRATION_NAME = "custody";
export const FIELD_MANAGER = "custody-operator";
export const DEFAULT_EXCLUDED_NAMESPACES: readonly string[] = ["kube-system"];

const API_PATH = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";

export interface LabelSelectorRequirement {
  key: string;
  operator: "In" | "NotIn" | "Exists" | "DoesNotExist";
  values?: string[];
}

export interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: LabelSelectorRequirement[];
}

export interface RuleWithOperations {
  operations: Array<"CREATE" | "UPDATE" | "DELETE" | "CONNECT" | "*">;
  apiGroups: string[];
  apiVersions: string[];
  resources: string[];
  scope?: "Cluster" | "Namespaced" | "*";
}

export interface WebhookClientConfig {
  url?: string;
  service?: { namespace: string; name: string; path?: string; port?: number };
  /** Base64 of the PEM bundle the API server trusts for this webhook. */
  caBundle?: string;
}

export interface MutatingWebhook {
  name: string;
  clientConfig: WebhookClientConfig;
  rules: RuleWithOperations[];
  failurePolicy: "Fail" | "Ignore";
  matchPolicy: "Equivalent" | "Exact";
  namespaceSelector?: LabelSelector;
  objectSelector?: LabelSelector;
  sideEffects: "None" | "NoneOnDryRun";
  timeoutSeconds: number;
  admissionReviewVersions: string[];
  reinvocationPolicy: "Never" | "IfNeeded";
}

export interface MutatingWebhookConfiguration {
  apiVersion: "admissionregistration.k8s.io/v1";
  kind: "MutatingWebhookConfiguration";
  metadata: { name: string; labels?: Record<string, string>; resourceVersion?: string; [k: string]: unknown };
  webhooks: MutatingWebhook[];
}

export type ClientEndpoint =
  /** e.g. https://127.0.0.1:8443 for `make run`; the webhook path is appended. */
  { url: string } | { service: { namespace: string; name: string; port: number } };

export interface RegistrationOptions {
  /** Default "custody". */
  name?: string;
  clientConfig: ClientEndpoint;
  /** PEM of the CA(s) that issue the serving certificate (during a CA rotation: old and new). */
  caBundlePem: string;
  /** Applied to every webhook, merged with the pods/workloads exclusions (for scoping a test installation). */
  namespaceSelector?: LabelSelector;
  /** Namespaces where pods and workloads are never sent to Custody. Default ["kube-system"]. */
  excludedNamespaces?: readonly string[];
}

export class RegistrationError extends Error {
  readonly field: string;
  constructor(field: string, rule: string) {
    super(`${field}: ${rule}`);
    this.name = "RegistrationError";
    this.field = field;
  }
}

function clientConfigFor(endpoint: ClientEndpoint, path: string, caBundle: string): WebhookClientConfig {
  if ("url" in endpoint) {
    let url: URL;
    try {
      url = new URL(endpoint.url);
    } catch {
      throw new RegistrationError("clientConfig.url", `"${endpoint.url}" is not a URL`);
    }
    // The API server refuses anything else (admissionregistration validation).
    if (url.protocol !== "https:") throw new RegistrationError("clientConfig.url", "must use https");
    if (url.search || url.hash || url.username || url.password) {
      throw new RegistrationError("clientConfig.url", "must not carry a query, fragment or user info");
    }
    return { url: `${url.origin}${url.pathname.replace(/\/+$/, "")}${path}`, caBundle };
  }
  const { namespace, name, port } = endpoint.service;
  if (!namespace || !name) throw new RegistrationError("clientConfig.service", "needs namespace and name");
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new RegistrationError("clientConfig.service.port", "must be an integer in 1..65535");
  }
  return { service: { namespace, name, port, path }, caBundle };
}

/** The option selector, plus `kubernetes.io/metadata.name NotIn excluded` when there is anything to exclude. */
function withExclusions(selector: LabelSelector | undefined, excluded: readonly string[]): LabelSelector {
  const matchExpressions = [...(selector?.matchExpressions ?? [])];
  if (excluded.length > 0) {
    matchExpressions.push({ key: "kubernetes.io/metadata.name", operator: "NotIn", values: [...excluded] });
  }
  return {
    ...(selector?.matchLabels ? { matchLabels: { ...selector.matchLabels } } : {}),
    ...(matchExpressions.length > 0 ? { matchExpressions } : {}),
  };
}

const optInSelector = (): LabelSelector => ({
  matchExpressions: [{ key: TASK_LABEL, operator: "Exists" }],
});

export function buildWebhookConfiguration(options: RegistrationOptions): MutatingWebhookConfiguration {
  const name = options.name ?? DEFAULT_REGISTRATION_NAME;
  const blocks = (() => {
    try {
      return fromPem(options.caBundlePem, "caBundlePem");
    } catch (e) {
      throw new RegistrationError("caBundlePem", (e as Error).message);
    }
  })();
  if (!blocks.some((b) => b.label === "CERTIFICATE")) {
    throw new RegistrationError("caBundlePem", "must contain at least one PEM CERTIFICATE");
  }
  if (blocks.some((b) => b.label !== "CERTIFICATE")) {
    throw new RegistrationError("caBundlePem", "must contain only certificates (no keys)");
  }
  const caBundle = Buffer.from(options.caBundlePem, "utf8").toString("base64");
  const excluded = options.excludedNamespaces ?? DEFAULT_EXCLUDED_NAMESPACES;
  excluded.forEach((ns, i) => {
    if (typeof ns !== "string" || ns.length === 0) {
      throw new RegistrationError(`excludedNamespaces[${i}]`, "must be a non-empty namespace name");
    }
  });
  const scoped = () => withExclusions(options.namespaceSelector, excluded);
  const common = () => ({ matchPolicy: "Equivalent" as const, admissionReviewVersions: ["v1"] });

  const agenttasks: MutatingWebhook = {
    name: AGENTTASKS_WEBHOOK,
    clientConfig: clientConfigFor(options.clientConfig, AGENTTASKS_PATH, caBundle),
    rules: [
      {
        operations: ["CREATE", "UPDATE"],
        apiGroups: ["custody.dev"],
        apiVersions: ["v1alpha1"],
        resources: ["agenttasks"],
        scope: "Namespaced",
      },
    ],
    failurePolicy: "Fail",
    ...common(),
    ...(options.namespaceSelector
      ? { namespaceSelector: withExclusions(options.namespaceSelector, []) }
      : {}),
    // The webhook's side effect (recording a replay-once assertion id) is skipped on dry runs.
    sideEffects: "NoneOnDryRun",
    timeoutSeconds: 10,
    reinvocationPolicy: "Never",
  };
  const pods: MutatingWebhook = {
    name: PODS_WEBHOOK,
    clientConfig: clientConfigFor(options.clientConfig, PODS_PATH, caBundle),
    rules: [
      {
        operations: ["CREATE"],
        apiGroups: [""],
        apiVersions: ["v1"],
        resources: ["pods"],
        scope: "Namespaced",
      },
    ],
    failurePolicy: "Fail",
    ...common(),
    namespaceSelector: scoped(),
    objectSelector: optInSelector(),
    sideEffects: "None",
    timeoutSeconds: 5,
    // Other mutating webhooks may add containers after ours: re-run to mount into them too.
    reinvocationPolicy: "IfNeeded",
  };
  const workloads: MutatingWebhook = {
    name: WORKLOADS_WEBHOOK,
    clientConfig: clientConfigFor(options.clientConfig, WORKLOADS_PATH, caBundle),
    rules: [
      {
        operations: ["CREATE", "UPDATE"],
        apiGroups: ["apps"],
        apiVersions: ["v1"],
        resources: ["deployments", "statefulsets", "daemonsets", "replicasets"],
        scope: "Namespaced",
      },
      {
        operations: ["CREATE", "UPDATE"],
        apiGroups: ["batch"],
        apiVersions: ["v1"],
        resources: ["jobs", "cronjobs"],
        scope: "Namespaced",
      },
    ],
    failurePolicy: "Fail",
    ...common(),
    namespaceSelector: scoped(),
    objectSelector: optInSelector(),
    sideEffects: "None",
    timeoutSeconds: 5,
    reinvocationPolicy: "Never",
  };
  // Policies must compile (CEL parse, type check, bounds): refused at apply
  // time otherwise. Fail closed: a policy the webhook never saw could fail to
  // compile in the operator, which then denies what it selects.
  const policies: MutatingWebhook = {
    name: POLICIES_WEBHOOK,
    clientConfig: clientConfigFor(options.clientConfig, POLICIES_PATH, caBundle),
    rules: [
      {
        operations: ["CREATE", "UPDATE"],
        apiGroups: ["custody.dev"],
        apiVersions: ["v1alpha1"],
        resources: ["agentpolicies", "clusteragentpolicies"],
        scope: "*",
      },
    ],
    failurePolicy: "Fail",
    ...common(),
    ...(options.namespaceSelector
      ? { namespaceSelector: withExclusions(options.namespaceSelector, []) }
      : {}),
    sideEffects: "None",
    timeoutSeconds: 5,
    reinvocationPolicy: "Never",
  };
  return {
    apiVersion: "admissionregistration.k8s.io/v1",
    kind: "MutatingWebhookConfiguration",
    metadata: { name, labels: { [MANAGED_BY_LABEL]: MANAGED_BY } },
    webhooks: [agenttasks, pods, workloads, policies],
  };
}

/**
 * Server-side applies any MutatingWebhookConfiguration as custody-operator
 * (forced: Custody owns these fields even if someone edited them).
 */
export function applyWebhookConfiguration(
  rest: KubeRest,
  config: MutatingWebhookConfiguration,
): Promise<MutatingWebhookConfiguration> {
  const path = `${API_PATH}/${encodeURIComponent(config.metadata.name)}?fieldManager=${FIELD_MANAGER}&force=true`;
  return rest.patch<MutatingWebhookConfiguration>(path, config, "apply");
}

/**
 * Applies Custody's three webhooks. Idempotent; applying again with a new
 * caBundlePem (CA rotation) updates every webhook's caBundle in place.
 */
export function applyRegistration(
  rest: KubeRest,
  options: RegistrationOptions,
): Promise<MutatingWebhookConfiguration> {
  return applyWebhookConfiguration(rest, buildWebhookConfiguration(options));
}

export function getRegistration(
  rest: KubeRest,
  name = DEFAULT_REGISTRATION_NAME,
): Promise<MutatingWebhookConfiguration | undefined> {
  return rest
    .get<MutatingWebhookConfiguration>(`${API_PATH}/${encodeURIComponent(name)}`)
    .catch((e: unknown) => {
      if (isNotFound(e)) return undefined;
      throw e;
    });
}

/** Deletes the configuration; true if it existed. Fail-closed webhooks must not outlive their server. */
export async function removeRegistration(rest: KubeRest, name = DEFAULT_REGISTRATION_NAME): Promise<boolean> {
  try {
    await rest.delete(`${API_PATH}/${encodeURIComponent(name)}`);
    return true;
  } catch (e) {
    if (isNotFound(e)) return false;
    throw e;
  }
}

/**
 * For an installation whose registration another tool owns (the Helm chart:
 * so that `helm uninstall` removes every fail-closed webhook): only keep each
 * webhook's caBundle current. Never creates the object: a strategic merge
 * patch on a missing configuration is a 404, so an operator still running
 * while the chart is uninstalled cannot bring the registration back.
 * Returns false when the configuration does not exist.
 */
export async function patchCaBundle(rest: KubeRest, name: string, caBundlePem: string): Promise<boolean> {
  const current = await getRegistration(rest, name);
  if (!current) return false;
  const caBundle = Buffer.from(caBundlePem, "utf8").toString("base64");
  const stale = current.webhooks.filter((w) => w.clientConfig.caBundle !== caBundle);
  if (stale.length === 0) return true;
  try {
    await rest.patch(
      `${API_PATH}/${encodeURIComponent(name)}`,
      { webhooks: stale.map((w) => ({ name: w.name, clientConfig: { caBundle } })) },
      "strategic",
    );
  } catch (e) {
    if (isNotFound(e)) return false;
    throw e;
  }
  return true;
}
