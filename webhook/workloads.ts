/**
 * `/admit/workloads` (CREATE, UPDATE of apps/v1 Deployments, StatefulSets,
 * DaemonSets, ReplicaSets and batch/v1 Jobs, CronJobs): checks the person
 * where they act, and stamps the workload.
 *
 * Pods of a workload are created by a controller, so at pod admission the
 * requester is the controller. The person who asked for the workload is
 * checked here instead, with the same rules as for a bare pod (task state,
 * the template's service account, may use the task), and the workload gets a
 * signed stamp (core/admission/stamp.ts) that the pods webhook requires of a
 * controller-created pod's owner. A ReplicaSet made by the deployment
 * controller (or a Job made by the cronjob controller) is stamped when its
 * own owner carries a valid stamp for the same task, so the chain
 * Deployment → ReplicaSet → Pod always leads back to a checked person.
 *
 * Every UPDATE that changes the spec is re-authorized and re-stamped, so
 * someone who may edit the Deployment but may not use the task cannot change
 * its image (or raise its replicas through the spec, or point it at another
 * task) and keep the identity. The `scale` subresource is not routed here: it
 * cannot change the template, only how many pods of the stamped one run
 * (docs/admission.md says why, and what that grants). An UPDATE that leaves the spec as it was (or only lowers
 * replicas) and keeps the stored stamp makes no pod that could not be made
 * before, and passes as it is: the deployment controller's revision
 * annotations and scale-downs, finalizers, the garbage collector's
 * ownerReference edits, other labels and annotations. Refusing those would
 * wedge controllers and deletions. An incoming stamp that differs from the
 * stored one is never trusted: the webhook replaces it.
 */
import { isDeepStrictEqual } from "node:util";
import { injectionPatch } from "../core/admission/injection.ts";
import { STAMP_ANNOTATION, signStamp, WORKLOAD_KINDS } from "../core/admission/stamp.ts";
import { ValidationError } from "../core/errors.ts";
import { buildTaskSpiffeId } from "../core/spiffe.ts";
import {
  type AdmissionHandler,
  type AdmissionRequest,
  type AdmissionResult,
  allow,
  deny,
  type JsonPatchOperation,
  pointerSegment,
} from "./admission.ts";
import {
  checkServiceAccount,
  type IdentityAdmissionDeps,
  isObject,
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

const GROUP_OF: Readonly<Record<string, string>> = {
  Deployment: "apps",
  StatefulSet: "apps",
  DaemonSet: "apps",
  ReplicaSet: "apps",
  Job: "batch",
  CronJob: "batch",
};

/** Workloads that controllers create from other workloads, and the owner kind (with apiVersion) they need. */
export const WORKLOAD_OWNER_KINDS: Readonly<Record<string, Readonly<Record<string, string>>>> = {
  ReplicaSet: { Deployment: "apps/v1" },
  Job: { CronJob: "batch/v1" },
};

interface TemplateAt {
  template: Record<string, unknown>;
  /** Field path of the template, for messages. */
  field: string;
  /** JSON Pointer of the template. */
  pointer: string;
}

function templateOf(kind: string, object: unknown): TemplateAt | undefined {
  const spec = stringMap(stringMap(object).spec);
  if (kind === "CronJob") {
    const template = stringMap(stringMap(stringMap(spec.jobTemplate).spec).template);
    return isObject(stringMap(stringMap(spec.jobTemplate).spec).template)
      ? { template, field: "spec.jobTemplate.spec.template", pointer: "/spec/jobTemplate/spec/template" }
      : undefined;
  }
  return isObject(spec.template)
    ? { template: spec.template, field: "spec.template", pointer: "/spec/template" }
    : undefined;
}

const taskLabelOf = (template: TemplateAt | undefined): unknown =>
  template ? stringMap(stringMap(template.template.metadata).labels)[TASK_LABEL] : undefined;

export function createWorkloadAdmission(deps: IdentityAdmissionDeps): AdmissionHandler {
  return async (request) => {
    try {
      return await admitWorkload(deps, request);
    } catch (e) {
      // Anything else (a lookup or SubjectAccessReview that failed) is the
      // server shell's to log and turn into a fail-closed refusal.
      if (e instanceof ValidationError) return validationRefusal(e);
      throw e;
    }
  };
}

async function admitWorkload(
  deps: IdentityAdmissionDeps,
  request: AdmissionRequest,
): Promise<AdmissionResult> {
  if (request.operation !== "CREATE" && request.operation !== "UPDATE") return allow();
  const kind = request.kind.kind;
  if (!(WORKLOAD_KINDS as readonly string[]).includes(kind) || GROUP_OF[kind] !== request.kind.group) {
    return deny(
      400,
      `/admit/workloads admits apps/v1 and batch/v1 workloads, not ${request.kind.group}/${kind}`,
    );
  }
  const object = stringMap(request.object);
  const metadata = stringMap(object.metadata);
  const annotations = isObject(metadata.annotations) ? metadata.annotations : undefined;
  const incomingStamp = annotations?.[STAMP_ANNOTATION];
  const template = templateOf(kind, object);
  const templateLabelField = `${template?.field ?? "spec.template"}.${TASK_LABEL_FIELD}`;
  const labelValue = taskLabelOf(template);

  if (labelValue === undefined) {
    // The template does not opt in (the workload's own label routed it
    // here): its pods get no identity, and a stamp left on it (copied, or
    // from before the label was removed) must not vouch for anything later.
    return incomingStamp === undefined
      ? allow()
      : allow([{ op: "remove", path: `/metadata/annotations/${pointerSegment(STAMP_ANNOTATION)}` }]);
  }
  const task = taskNameFrom(labelValue, templateLabelField);
  if (typeof task !== "string") return task;
  if (request.operation === "UPDATE" && addsNothing(request)) return allow();

  // The stamp binds the name; with generateName it is not known at mutating admission.
  const name = request.name || (typeof metadata.name === "string" ? metadata.name : "");
  if (!name) {
    return deny(
      422,
      `metadata.name: a ${kind} whose pod template opts into an AgentTask identity needs a name, not ` +
        `generateName: the Custody stamp binds the name (rule generate-name)`,
    );
  }
  const namespace = request.namespace ?? (typeof metadata.namespace === "string" ? metadata.namespace : "");
  if (!namespace) return deny(400, "metadata.namespace: a workload's namespace is required (rule namespace)");

  // The objectSelector sees the workload's own label, the pods get the template's: they must agree.
  const ownLabel = stringMap(metadata.labels)[TASK_LABEL];
  if (ownLabel !== undefined && ownLabel !== task) {
    return deny(
      422,
      `${TASK_LABEL_FIELD}: is ${JSON.stringify(ownLabel)}, but ${templateLabelField} is ` +
        `${JSON.stringify(task)}; they must name the same AgentTask (rule label-match)`,
    );
  }

  const loaded = await loadWearableTask(deps, namespace, task, templateLabelField);
  if ("refusal" in loaded) return loaded.refusal;
  const taskObject = loaded.task;
  const taskUid = taskObject.metadata.uid;
  // Every stored object has a uid; without one the stamp could not bind the task.
  if (!taskUid) throw new Error(`AgentTask ${namespace}/${task} has no metadata.uid`);

  const saRefusal = checkServiceAccount(
    template?.template.spec,
    taskObject,
    `${template!.field}.spec.serviceAccountName`,
  );
  if (saRefusal) return saRefusal;

  // The pods webhook would refuse pods it cannot inject; say so now, on the object the person wrote.
  injectionPatch(
    template!.template,
    {
      task,
      spiffeId: buildTaskSpiffeId({
        trustDomain: deps.trustDomain,
        namespace,
        agent: taskObject.spec.agent.name,
        task,
      }),
      audiences: taskObject.spec.audiences ?? [],
    },
    { pointer: template!.pointer, field: `${template!.field}.` },
  );

  const user = request.userInfo;
  let requester: string | undefined;
  let controllerWhy: string | undefined;
  const ownerKinds = WORKLOAD_OWNER_KINDS[kind];
  if (ownerKinds && user.username && deps.controllerUsernames.has(user.username)) {
    const owned = await stampedOwner(deps, metadata, namespace, taskObject, ownerKinds);
    // The person the owner's stamp names stays the requester down the chain.
    if ("stamp" in owned) requester = owned.stamp.requester;
    else controllerWhy = owned.why;
  }
  if (requester === undefined && (await mayUseTask(deps, user, taskObject, namespace))) {
    requester = user.username;
  }
  if (!requester) {
    return mayNotUse(user, taskObject, namespace, `a ${kind}`, controllerWhy, templateLabelField);
  }

  const stamp = signStamp(deps.signer, {
    v: 1,
    kind: kind as (typeof WORKLOAD_KINDS)[number],
    namespace,
    name,
    task,
    taskUid,
    requester,
    issuedAt: new Date(deps.now()).toISOString(),
  });
  // `add` on an existing member replaces it (RFC 6902 §4.1): any incoming stamp is overwritten.
  const patch: JsonPatchOperation[] = annotations
    ? [{ op: "add", path: `/metadata/annotations/${pointerSegment(STAMP_ANNOTATION)}`, value: stamp }]
    : [{ op: "add", path: "/metadata/annotations", value: { [STAMP_ANNOTATION]: stamp } }];
  return allow(patch, loaded.warnings);
}

/**
 * An UPDATE after which the workload makes no pod it could not make before:
 * the spec is unchanged except, at most, fewer replicas, and the stamp is the
 * stored one (byte for byte, so none is swapped in). Pods are made from the
 * spec and admitted on the stamp, so there is nothing to re-authorize, even
 * when the task has since been revoked: refusing would keep the deployment
 * controller from scaling down an old ReplicaSet, and the garbage collector
 * from finishing a deletion.
 */
function addsNothing(request: AdmissionRequest): boolean {
  const oldObject = stringMap(request.oldObject);
  const newObject = stringMap(request.object);
  const oldStamp = stringMap(stringMap(oldObject.metadata).annotations)[STAMP_ANNOTATION];
  const newStamp = stringMap(stringMap(newObject.metadata).annotations)[STAMP_ANNOTATION];
  if (newStamp !== oldStamp || !isObject(oldObject.spec) || !isObject(newObject.spec)) return false;
  const { replicas: oldReplicas, ...oldRest } = oldObject.spec;
  const { replicas: newReplicas, ...newRest } = newObject.spec;
  if (!isDeepStrictEqual(oldRest, newRest)) return false;
  // Absent replicas default to 1 (the API server defaults them before admission anyway).
  const count = (r: unknown): number =>
    r === undefined || r === null ? 1 : typeof r === "number" ? r : Number.NaN;
  return count(newReplicas) <= count(oldReplicas);
}
