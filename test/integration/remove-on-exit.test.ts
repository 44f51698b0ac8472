// With CUSTODY_WEBHOOK_REMOVE_ON_EXIT (what `make run` sets), the operator must
// not leave its fail-closed webhooks behind when it exits on its own,
// not only on a signal: a takeover that fails (here: the provenance key cannot
// be published, refused by a policy of this test) ends the process, and the
// registration it made goes with it. Leader election is off here (one
// process, no Lease); with it on, the same exit path runs.
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, expect, inject, it } from "vitest";
import { loadClusterCredentials } from "../../shells/kube/credentials.ts";
import { isNotFound, KubeRest } from "../../shells/kube/rest.ts";
import { eventually } from "../support/eventually.ts";
import {
  installCustody,
  type OperatorProcess,
  removeInstallation,
  startOperator,
} from "../support/operator-process.ts";

const env = inject("localEnv");
const run = randomUUID().slice(0, 6);
const opNs = `custody-roe-${run}`;
const configName = `custody-roe-${run}`;
const policy = `test-refuse-provenance-${run}`;
const admin = new KubeRest(loadClusterCredentials({ kubeconfig: env.kubeconfig }));
const VAP = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies";
const VAPB = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings";
const MWC = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";
let operator: OperatorProcess | undefined;

beforeAll(async () => {
  installCustody(env);
  await admin.post("/api/v1/namespaces", { metadata: { name: opNs } });
  // Refuses the operator's writes of its provenance ConfigMap in this namespace only.
  await admin.post(VAP, {
    metadata: { name: policy },
    spec: {
      failurePolicy: "Fail",
      matchConstraints: {
        namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": opNs } },
        resourceRules: [
          {
            apiGroups: [""],
            apiVersions: ["v1"],
            operations: ["CREATE", "UPDATE"],
            resources: ["configmaps"],
          },
        ],
      },
      validations: [
        { expression: "object.metadata.name != 'custody-provenance'", message: "refused by the test" },
      ],
    },
  });
  await admin.post(VAPB, {
    metadata: { name: policy },
    spec: { policyName: policy, validationActions: ["Deny"] },
  });
  // The policy takes effect once the API server has loaded it.
  await eventually(
    async () => {
      const refused = await admin
        .post(`/api/v1/namespaces/${opNs}/configmaps?dryRun=All`, {
          metadata: { name: "custody-provenance" },
        })
        .then(
          () => false,
          () => true,
        );
      if (!refused) throw new Error("the test's policy does not refuse the provenance ConfigMap yet");
    },
    { timeoutMs: 30_000 },
  );
}, 60_000);

afterAll(async () => {
  await operator?.stop("SIGKILL");
  await admin.delete(`${VAPB}/${policy}`).catch(() => undefined);
  await admin.delete(`${VAP}/${policy}`).catch(() => undefined);
  await removeInstallation(admin, { configName, namespaces: [opNs] });
  admin.close();
}, 60_000);

it("removes its webhook registration when a failed takeover ends the process", async () => {
  operator = await startOperator(env, {
    namespace: opNs,
    topic: `custody.roe.${run}`,
    waitReady: false,
    admission: { configName, namespaceSelector: { matchLabels: { "custody.dev/testbed": run } } },
    extraEnv: { CUSTODY_LEADER_ELECTION: "false", CUSTODY_WEBHOOK_REMOVE_ON_EXIT: "true" },
  });
  const child = operator.child;
  const code = await new Promise<number | null>((resolve) => {
    if (child.exitCode !== null) resolve(child.exitCode);
    else child.once("exit", (c) => resolve(c));
  });
  const logs = operator.logs.join("\n");
  expect(code).toBe(1);
  expect(logs).toContain("admission webhooks registered");
  expect(logs).toContain("could not start leading");
  expect(logs).toContain("admission webhooks unregistered");
  const gone = await admin.get(`${MWC}/${configName}`).then(
    () => false,
    (err: unknown) => isNotFound(err),
  );
  expect(gone).toBe(true);
}, 60_000);
