// One namespace for tasks, one for the operator's CA and Lease, the CRDs and
// policies installed, and operator processes running: what each integration
// test file needs before its first test, and removes after its last.
import { randomUUID } from "node:crypto";
import { CoreV1Api, CustomObjectsApi, type KubeConfig } from "@kubernetes/client-node";
import { loadClusterCredentials } from "../../shells/kube/credentials.ts";
import { KubeRest } from "../../shells/kube/rest.ts";
import { kubeConfigFor, type LocalEnv } from "../env/local-env.ts";
import { eventually } from "./eventually.ts";
import {
  installCustody,
  type OperatorProcess,
  removeInstallation,
  startOperator,
  waitForAdmission,
} from "./operator-process.ts";
import { retryWhileUnavailable } from "./unavailable.ts";

export const GROUP = "custody.dev";
export const VERSION = "v1alpha1";
export const PLURAL = "agenttasks";
/** Scopes a test installation's webhooks to its own namespace. */
export const TESTBED_LABEL = "custody.dev/testbed";

export interface Testbed {
  kc: KubeConfig;
  core: CoreV1Api;
  custom: CustomObjectsApi;
  /** Where the tests' AgentTasks live. */
  ns: string;
  /** The operator's namespace (CA, signing key, Lease). */
  opNs: string;
  topic: string;
  operators: OperatorProcess[];
  /** The MutatingWebhookConfiguration of this installation. */
  admissionConfigName: string;
  /**
   * Replaces operator `index` with a fresh process of the same installation
   * (same namespace, topic and webhook registration): stops the old one with
   * `signal` unless it has exited, starts the new one with `extraEnv`, and
   * waits until the webhook admits again.
   */
  restartOperator(
    index: number,
    extraEnv?: Record<string, string>,
    signal?: NodeJS.Signals,
  ): Promise<OperatorProcess>;
  /** Creates an AgentTask; a CRD installed moments ago can answer 503 for a short while. */
  createTask(body: unknown): Promise<void>;
  getTask<T>(name: string): Promise<T>;
  /** Waits until the task reaches `phase` and returns it. */
  waitPhase<T extends { status?: { phase?: string } }>(
    name: string,
    phase: string,
    timeoutMs?: number,
  ): Promise<T>;
  teardown(): Promise<void>;
}

export async function startTestbed(
  env: LocalEnv,
  prefix: string,
  replicas: Array<Record<string, string>> = [{}],
): Promise<Testbed> {
  const suffix = randomUUID().slice(0, 6);
  const kc = kubeConfigFor(env);
  const core = kc.makeApiClient(CoreV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);
  const ns = `${prefix}-${suffix}`;
  const opNs = `custody-${suffix}`;
  const topic = `custody.${prefix}.${suffix}`;
  const admission = {
    configName: `custody-${suffix}`,
    namespaceSelector: { matchLabels: { [TESTBED_LABEL]: suffix } },
  };
  await installCustody(env);
  await core.createNamespace({ body: { metadata: { name: ns, labels: { [TESTBED_LABEL]: suffix } } } });
  await core.createNamespace({ body: { metadata: { name: opNs } } });
  const operators: OperatorProcess[] = [];
  for (const extraEnv of replicas)
    operators.push(await startOperator(env, { namespace: opNs, topic, extraEnv, admission }));
  const rest = new KubeRest(loadClusterCredentials({ kubeconfig: env.kubeconfig }));
  try {
    await waitForAdmission(rest, ns, 60_000);
  } catch (err) {
    // Say why: the operators' own last words.
    const logs = operators.flatMap((op, i) => op.logs.slice(-20).map((l) => `[operator ${i}] ${l}`));
    throw new Error(`${(err as Error).message}\n${logs.join("\n")}`);
  } finally {
    rest.close();
  }
  const getTask = async <T>(name: string) =>
    (await custom.getNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: PLURAL,
      name,
    })) as T;
  return {
    kc,
    core,
    custom,
    ns,
    opNs,
    topic,
    operators,
    createTask: async (body) => {
      await retryWhileUnavailable(
        () =>
          custom.createNamespacedCustomObject({
            group: GROUP,
            version: VERSION,
            namespace: ns,
            plural: PLURAL,
            body,
          }),
        { delayMs: 200 },
      );
    },
    getTask,
    waitPhase: <T extends { status?: { phase?: string } }>(name: string, phase: string, timeoutMs = 20_000) =>
      eventually(
        async () => {
          const t = await getTask<T>(name);
          if (t.status?.phase !== phase)
            throw new Error(`${name}: phase ${t.status?.phase ?? "(none)"}, want ${phase}`);
          return t;
        },
        { timeoutMs },
      ).catch((err: Error) => {
        // A task that never settles: what the operators said last is the first clue.
        const logs = operators.flatMap((op, i) =>
          op.logs
            .filter((l) => !l.includes('"level":"debug"'))
            .slice(-8)
            .map((l) => `[operator ${i}] ${l.slice(0, 400)}`),
        );
        throw new Error(`${err.message}\n${logs.join("\n")}`);
      }),
    admissionConfigName: admission.configName,
    async restartOperator(index, extraEnv = {}, signal = "SIGTERM") {
      await operators[index]?.stop(signal);
      operators[index] = await startOperator(env, { namespace: opNs, topic, extraEnv, admission });
      const rest = new KubeRest(loadClusterCredentials({ kubeconfig: env.kubeconfig }), { connections: 1 });
      await waitForAdmission(rest, ns).finally(() => rest.close());
      return operators[index]!;
    },
    async teardown() {
      for (const op of operators) await op.stop("SIGKILL");
      // SIGKILL leaves the fail-closed registration and the tasks' finalizers behind.
      const cleaner = new KubeRest(loadClusterCredentials({ kubeconfig: env.kubeconfig }), {
        connections: 1,
      });
      await removeInstallation(cleaner, { configName: admission.configName, namespaces: [ns, opNs] });
      cleaner.close();
    },
  };
}
