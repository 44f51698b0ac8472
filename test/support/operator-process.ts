// Runs the real operator (node operator/main.ts) as a child process against
// the local environment, for integration tests; collects its JSON log lines.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { createServer } from "node:net";
import { join } from "node:path";
import { isNotFound, type KubeRest } from "../../shells/kube/rest.ts";
import type { LocalEnv } from "../env/local-env.ts";
import { eventually } from "./eventually.ts";
import { retryWhileUnavailable } from "./unavailable.ts";

const repo = join(import.meta.dirname, "..", "..");

/**
 * Node flags the operator runs with in production (the chart's NODE_OPTIONS):
 * a small young generation and a capped old space make V8 collect before it
 * grows the heap, which keeps RSS near the live set (docs/operations.md).
 */
export const OPERATOR_NODE_FLAGS = "--max-semi-space-size=1 --max-old-space-size=160";

export interface OperatorProcess {
  readonly child: ChildProcess;
  readonly healthPort: number;
  readonly webhookPort: number;
  readonly oidcPort: number;
  readonly logs: string[];
  readonly namespace: string;
  readonly topic: string;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export async function startOperator(
  env: LocalEnv,
  opts: {
    namespace: string;
    topic: string;
    extraEnv?: Record<string, string>;
    waitReady?: boolean;
    /** Run the compiled operator (dist/, `make build`) as production does, instead of the TypeScript source. */
    compiled?: boolean;
    nodeArgs?: string[];
    /**
     * The installation's webhook registration: a name of its own and a
     * namespace label it is scoped to, so that installations started by
     * different test files never admit each other's objects.
     */
    admission?: { configName: string; namespaceSelector: Record<string, unknown> };
  },
): Promise<OperatorProcess> {
  const healthPort = await freePort();
  const webhookPort = await freePort();
  const oidcPort = await freePort();
  const logs: string[] = [];
  const entry = opts.compiled ? join(repo, "dist", "operator", "main.js") : join(repo, "operator", "main.ts");
  const child = spawn(
    process.execPath,
    ["--disable-warning=TimeoutNegativeWarning", ...(opts.nodeArgs ?? []), entry],
    {
      cwd: repo,
      env: {
        PATH: process.env.PATH ?? "",
        HOME: process.env.HOME ?? "",
        KUBECONFIG: env.kubeconfig,
        CUSTODY_KAFKA_BROKERS: env.kafkaBrokers,
        CUSTODY_KAFKA_TOPIC: opts.topic,
        CUSTODY_NAMESPACE: opts.namespace,
        CUSTODY_HEALTH_ADDR: `127.0.0.1:${healthPort}`,
        CUSTODY_LOG_LEVEL: "info",
        CUSTODY_WEBHOOK_ADDR: `127.0.0.1:${webhookPort}`,
        CUSTODY_WEBHOOK_URL: `https://127.0.0.1:${webhookPort}`,
        CUSTODY_OIDC_ADDR: `127.0.0.1:${oidcPort}`,
        ...(opts.admission
          ? {
              CUSTODY_WEBHOOK_CONFIG_NAME: opts.admission.configName,
              CUSTODY_WEBHOOK_NAMESPACE_SELECTOR: JSON.stringify(opts.admission.namespaceSelector),
            }
          : {}),
        ...opts.extraEnv,
      },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  const collect = (chunk: Buffer) => {
    for (const line of chunk.toString("utf8").split("\n")) if (line.trim()) logs.push(line);
  };
  child.stdout?.on("data", collect);
  child.stderr?.on("data", collect);
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const proc: OperatorProcess = {
    child,
    healthPort,
    webhookPort,
    oidcPort,
    logs,
    namespace: opts.namespace,
    topic: opts.topic,
    async stop(signal = "SIGTERM") {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill(signal);
      return exited;
    },
  };
  if (opts.waitReady !== false) {
    try {
      await eventually(
        async () => {
          // An exited operator ends the wait at once (returning stops polling).
          if (child.exitCode !== null) return;
          const res = await fetch(`http://127.0.0.1:${healthPort}/readyz`);
          if (res.status !== 200) throw new Error(`readyz ${res.status}`);
        },
        { timeoutMs: 60_000, intervalMs: 100 },
      );
      if (child.exitCode !== null) throw new Error(`operator exited with ${child.exitCode}`);
    } catch (err) {
      await proc.stop("SIGKILL");
      throw new Error(
        `operator did not become ready: ${(err as Error).message}\n${logs.slice(-30).join("\n")}`,
      );
    }
  }
  return proc;
}

/** Installs what `make run` installs before the operator starts: the CRDs and the admission policies. */
export function installCustody(env: LocalEnv): void {
  for (const dir of ["crds", join("webhook", "manifests")]) {
    execFileSync(
      join(env.binDir, "kubectl"),
      ["apply", "--server-side", "--force-conflicts", "-f", join(repo, dir)],
      {
        env: { ...process.env, KUBECONFIG: env.kubeconfig },
        stdio: "pipe",
      },
    );
  }
}

/**
 * Until the leader has registered the webhook, AgentTasks would be created
 * without a requester record (and end Denied): wait until a dry-run create in
 * `namespace` comes back with one.
 */
export async function waitForAdmission(rest: KubeRest, namespace: string, timeoutMs = 30_000): Promise<void> {
  await eventually(
    async () => {
      const res = await retryWhileUnavailable(() =>
        rest.post<{ metadata?: { annotations?: Record<string, string> } }>(
          `/apis/custody.dev/v1alpha1/namespaces/${namespace}/agenttasks?dryRun=All`,
          {
            apiVersion: "custody.dev/v1alpha1",
            kind: "AgentTask",
            metadata: { name: "admission-probe" },
            spec: { agent: { name: "probe" }, scope: ["read:probe"], serviceAccountName: "default" },
          },
        ),
      );
      if (!res.metadata?.annotations?.["custody.dev/requester-record"])
        throw new Error("the admission webhook has not stamped a dry-run AgentTask yet");
    },
    { timeoutMs, intervalMs: 200 },
  );
}

/**
 * Removes what a bench or test installation leaves when its operator is gone:
 * the fail-closed webhook registration first (else every later write to a
 * task fails), then the finalizers no operator will remove, then the
 * namespaces (which would otherwise stay Terminating with their tasks).
 */
export async function removeInstallation(
  rest: KubeRest,
  opts: {
    configName: string;
    namespaces: readonly string[];
    /**
     * Wait until the namespaces are gone: deleting thousands of objects keeps
     * the API server busy for a minute, and a bench that starts meanwhile
     * measures that instead of itself.
     */
    waitGoneMs?: number;
  },
): Promise<void> {
  await rest
    .delete(`/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/${opts.configName}`)
    .catch(() => undefined);
  for (const ns of opts.namespaces) {
    const list = await rest
      .get<{ items?: Array<{ metadata: { name: string; finalizers?: string[] } }> }>(
        `/apis/custody.dev/v1alpha1/namespaces/${ns}/agenttasks`,
      )
      .catch(() => ({ items: [] }));
    const todo = (list.items ?? []).filter((t) => (t.metadata.finalizers ?? []).length > 0);
    let next = 0;
    await Promise.all(
      Array.from({ length: 32 }, async () => {
        while (next < todo.length) {
          const t = todo[next++]!;
          await rest
            .patch(`/apis/custody.dev/v1alpha1/namespaces/${ns}/agenttasks/${t.metadata.name}`, {
              metadata: { finalizers: null },
            })
            .catch(() => undefined);
        }
      }),
    );
    await rest.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  }
  if (!opts.waitGoneMs) return;
  const deadline = Date.now() + opts.waitGoneMs;
  for (const ns of opts.namespaces) {
    for (;;) {
      const gone = await rest.get(`/api/v1/namespaces/${ns}`).then(
        () => false,
        (err: unknown) => isNotFound(err),
      );
      if (gone) break;
      if (Date.now() >= deadline) {
        process.stderr.write(`warning: namespace ${ns} still not gone after ${opts.waitGoneMs} ms\n`);
        break;
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}
