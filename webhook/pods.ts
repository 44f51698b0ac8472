/**
 * `/admit/pods` (CREATE): gives an opted-in pod its task's identity.
 *
 * The registration's objectSelector sends only pods labelled
 * `custody.dev/agent-task`; the label's value names the task (same
 * namespace). Checked in order, each refusal naming its field and rule:
 *   1. the task exists and its state lets it be worn (task-use.ts);
 *   2. the pod runs under the task's spec.serviceAccountName;
 *   3. the identity can be injected without overriding the pod's author;
 *   4. whoever asked may use the task: (a) the task's own requester (its
 *      signed record), (b) a SubjectAccessReview for verb `use` on the task,
 *      or (c) a workload controller creating the pod from an owner that
 *      exists with the referenced uid and carries a valid stamp for this task
 *      (the person was checked on that owner by the workloads webhook). A user
 *      who writes a controller ownerReference into a bare pod is still the
 *      requester, so (c) never applies to them.
 * Then the injection patch (core/admission/injection.ts). Re-invocation
 * (reinvocationPolicy IfNeeded) computes an empty patch.
 */
import { injectionPatch, injectionWarnings } from "../core/admission/injection.ts";
import { ValidationError } from "../core/errors.ts";
import { buildTaskSpiffeId } from "../core/spiffe.ts";
import {
  type AdmissionHandler,
  type AdmissionRequest,
  type AdmissionResult,
  allow,
  deny,
} from "./admission.ts";
import {
  checkServiceAccount,
  type IdentityAdmissionDeps,
  loadWearableTask,
  mayNotUse,
  mayUseTask,
  stampedOwner,
  stringMap,
  TASK_LABEL,
  TASK_LABEL_FIELD,
  taskNameFrom,
  validationRefusal,
} from "./task-use.ts";

/** The owners whose controllers create pods, with the apiVersion their ownerReference must carry. */
export const POD_OWNER_KINDS: Readonly<Record<string, string>> = {
  ReplicaSet: "apps/v1",
  StatefulSet: "apps/v1",
  DaemonSet: "apps/v1",
  Job: "batch/v1",
};

export function createPodAdmission(deps: IdentityAdmissionDeps): AdmissionHandler {
  return async (request) => {
    try {
      return await admitPod(deps, request);
    } catch (e) {
      // Anything else (a lookup or SubjectAccessReview that failed) is the
      // server shell's to log and turn into a fail-closed refusal.
      if (e instanceof ValidationError) return validationRefusal(e);
      throw e;
    }
  };
}

async function admitPod(deps: IdentityAdmissionDeps, request: AdmissionRequest): Promise<AdmissionResult> {
  // Pods cannot change volumes or env after creation: only CREATE is routed here.
  if (request.operation !== "CREATE") return allow();
  if (request.kind.kind !== "Pod" || request.kind.group !== "") {
    return deny(400, `/admit/pods admits core/v1 Pods, not ${request.kind.group}/${request.kind.kind}`);
  }
  const pod = stringMap(request.object);
  const metadata = stringMap(pod.metadata);
  const labels = stringMap(metadata.labels);
  // Pods that do not opt in are never mutated (the objectSelector should not send them).
  if (!(TASK_LABEL in labels)) return allow();
  const namespace = request.namespace ?? (typeof metadata.namespace === "string" ? metadata.namespace : "");
  if (!namespace) return deny(400, "metadata.namespace: a pod's namespace is required (rule namespace)");

  const name = taskNameFrom(labels[TASK_LABEL], TASK_LABEL_FIELD);
  if (typeof name !== "string") return name;
  const loaded = await loadWearableTask(deps, namespace, name, TASK_LABEL_FIELD);
  if ("refusal" in loaded) return loaded.refusal;
  const { task } = loaded;

  const saRefusal = checkServiceAccount(pod.spec, task, "spec.serviceAccountName");
  if (saRefusal) return saRefusal;

  // Pure and cheap: an uninjectable pod is refused before any SubjectAccessReview.
  const target = {
    task: name,
    spiffeId: buildTaskSpiffeId({
      trustDomain: deps.trustDomain,
      namespace,
      agent: task.spec.agent.name,
      task: name,
    }),
    audiences: task.spec.audiences ?? [],
  };
  const patch = injectionPatch(pod, target);

  const user = request.userInfo;
  let allowed = false;
  let controllerWhy: string | undefined;
  if (user.username && deps.controllerUsernames.has(user.username)) {
    const owned = await stampedOwner(deps, metadata, namespace, task, POD_OWNER_KINDS);
    if ("stamp" in owned) allowed = true;
    else controllerWhy = owned.why;
  }
  // (a)/(b) for everyone, controllers included (a controller granted `use` needs no stamp).
  if (!allowed) allowed = await mayUseTask(deps, user, task, namespace);
  if (!allowed) return mayNotUse(user, task, namespace, "a pod", controllerWhy);

  return allow(patch, [...loaded.warnings, ...injectionWarnings(pod, target)]);
}
