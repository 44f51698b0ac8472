// Cluster credentials for the operator's own HTTP/2 client, read the way
// kubectl reads them (an explicit file, $KUBECONFIG, ~/.kube/config, or the
// in-cluster service account) but without @kubernetes/client-node: importing
// its KubeConfig loads the whole generated API (~90 MB RSS), which alone
// would spend most of the operator's memory budget. Supported: client
// certificates, bearer tokens and token files (rotated service-account
// tokens are re-read). Exec and auth-provider plugins are for interactive
// users; the CLI, which uses client-node, supports them.
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, isAbsolute, join } from "node:path";
import { load as parseYaml } from "js-yaml";

export interface ClusterCredentials {
  readonly server: string;
  readonly ca?: Buffer | undefined;
  readonly cert?: Buffer | undefined;
  readonly key?: Buffer | undefined;
  readonly insecureSkipTlsVerify: boolean;
  /** Current bearer token, if any (re-read from its file when it rotates). */
  token(): string | undefined;
  /** Where the credentials came from, for logs. */
  readonly source: string;
  /** The context's default namespace, if it sets one. */
  readonly namespace?: string | undefined;
}

const IN_CLUSTER_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";

interface KubeconfigFile {
  "current-context"?: string;
  clusters?: Array<{ name: string; cluster: Record<string, unknown> }>;
  users?: Array<{ name: string; user: Record<string, unknown> }>;
  contexts?: Array<{ name: string; context: { cluster: string; user: string; namespace?: string } }>;
}

export function loadClusterCredentials(
  opts: { kubeconfig?: string; context?: string } = {},
): ClusterCredentials {
  const path =
    opts.kubeconfig ??
    process.env.KUBECONFIG?.split(":").find((p) => p && existsSync(p)) ??
    (existsSync(join(homedir(), ".kube", "config")) ? join(homedir(), ".kube", "config") : undefined);
  if (path) return fromKubeconfig(path, opts.context);
  if (process.env.KUBERNETES_SERVICE_HOST && existsSync(join(IN_CLUSTER_DIR, "token"))) return inCluster();
  throw new Error("kubeconfig: none found (set KUBECONFIG, create ~/.kube/config, or run in a pod)");
}

function inCluster(): ClusterCredentials {
  const host = process.env.KUBERNETES_SERVICE_HOST ?? "";
  const port = process.env.KUBERNETES_SERVICE_PORT ?? "443";
  return {
    server: `https://${host.includes(":") ? `[${host}]` : host}:${port}`,
    ca: readFileSync(join(IN_CLUSTER_DIR, "ca.crt")),
    insecureSkipTlsVerify: false,
    token: rereading(join(IN_CLUSTER_DIR, "token")),
    source: "in-cluster service account",
    namespace: existsSync(join(IN_CLUSTER_DIR, "namespace"))
      ? readFileSync(join(IN_CLUSTER_DIR, "namespace"), "utf8").trim()
      : undefined,
  };
}

function fromKubeconfig(path: string, contextName?: string): ClusterCredentials {
  const doc = parseYaml(readFileSync(path, "utf8")) as KubeconfigFile;
  const base = dirname(path);
  const name = contextName ?? doc["current-context"];
  const context = doc.contexts?.find((c) => c.name === name)?.context;
  if (!context) throw new Error(`kubeconfig ${path}: context "${name ?? ""}" not found`);
  const cluster = doc.clusters?.find((c) => c.name === context.cluster)?.cluster;
  const user = doc.users?.find((u) => u.name === context.user)?.user ?? {};
  if (!cluster || typeof cluster.server !== "string") {
    throw new Error(`kubeconfig ${path}: cluster "${context.cluster}" has no server`);
  }
  for (const unsupported of ["exec", "auth-provider"]) {
    if (user[unsupported]) {
      throw new Error(
        `kubeconfig ${path}: user "${context.user}" uses ${unsupported}; the operator needs a client certificate or a token`,
      );
    }
  }
  const material = (dataKey: string, fileKey: string, from: Record<string, unknown>): Buffer | undefined => {
    const data = from[dataKey];
    if (typeof data === "string") return Buffer.from(data, "base64");
    const file = from[fileKey];
    if (typeof file === "string") return readFileSync(isAbsolute(file) ? file : join(base, file));
    return undefined;
  };
  const staticToken = typeof user.token === "string" ? user.token : undefined;
  const tokenFile = typeof user.tokenFile === "string" ? user.tokenFile : undefined;
  return {
    server: cluster.server,
    ca: material("certificate-authority-data", "certificate-authority", cluster),
    cert: material("client-certificate-data", "client-certificate", user),
    key: material("client-key-data", "client-key", user),
    insecureSkipTlsVerify: cluster["insecure-skip-tls-verify"] === true,
    token: tokenFile
      ? rereading(isAbsolute(tokenFile) ? tokenFile : join(base, tokenFile))
      : () => staticToken,
    source: `kubeconfig ${path} (context ${name})`,
    namespace: context.namespace,
  };
}

/** Reads a token file at most once a minute: kubelet rotates projected tokens well before expiry. */
function rereading(file: string): () => string {
  let value = "";
  let readAt = 0;
  return () => {
    if (Date.now() - readAt > 60_000) {
      value = readFileSync(file, "utf8").trim();
      readAt = Date.now();
    }
    return value;
  };
}
