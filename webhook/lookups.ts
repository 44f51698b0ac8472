/**
 * The I/O the pods and workloads webhooks need, over KubeRest: the task (from
 * the operator's informer cache when given one, else a GET), workload owners
 * by kind, and the SubjectAccessReview for verb `use` on a task.
 *
 * RBAC the webhook's identity needs: get on agenttasks.custody.dev, on
 * deployments, replicasets, statefulsets, daemonsets (apps) and jobs,
 * cronjobs (batch); create on subjectaccessreviews.authorization.k8s.io.
 */
import type { AgentTask } from "../core/api/v1alpha1.ts";
import { GROUP, PLURAL, VERSION } from "../core/api/v1alpha1.ts";
import { createCachedAccessReview } from "../shells/kube/authorization.ts";
import { isNotFound, type KubeRest } from "../shells/kube/rest.ts";
import type { UserInfo } from "./admission.ts";
import type { IdentityAdmissionDeps } from "./task-use.ts";

/** Plural resource names of the kinds the webhooks look up; anything else is never fetched. */
const PLURALS: Readonly<Record<string, string>> = {
  "apps/v1/Deployment": "deployments",
  "apps/v1/ReplicaSet": "replicasets",
  "apps/v1/StatefulSet": "statefulsets",
  "apps/v1/DaemonSet": "daemonsets",
  "batch/v1/Job": "jobs",
  "batch/v1/CronJob": "cronjobs",
};

const enc = encodeURIComponent;

export type TaskCacheLookup = (namespace: string, name: string) => AgentTask | undefined;

export type AdmissionLookups = Pick<IdentityAdmissionDeps, "getTask" | "getObject" | "canUseTask">;

/**
 * `cachedTask` is the operator informer's lookup. A miss falls back to a GET,
 * so a task created a moment ago (not yet in the cache) is still found; a
 * task deleted a moment ago may still be found in the cache, which only
 * matters until its deletion (or the finalizer's revocation) arrives.
 */
/** How long a SubjectAccessReview answer is reused (an RBAC change takes effect within it). */
export const SAR_CACHE_TTL_MS = 5_000;

export function createAdmissionLookups(rest: KubeRest, cachedTask?: TaskCacheLookup): AdmissionLookups {
  const review = createCachedAccessReview(rest, SAR_CACHE_TTL_MS);
  return {
    async getTask(namespace, name) {
      const cached = cachedTask?.(namespace, name);
      if (cached) return cached;
      return getOrUndefined<AgentTask>(
        rest,
        `/apis/${GROUP}/${VERSION}/namespaces/${enc(namespace)}/${PLURAL}/${enc(name)}`,
      );
    },
    async getObject(apiVersion, kind, namespace, name) {
      const plural = PLURALS[`${apiVersion}/${kind}`];
      if (!plural) return undefined;
      return getOrUndefined(rest, `/apis/${apiVersion}/namespaces/${enc(namespace)}/${plural}/${enc(name)}`);
    },
    async canUseTask(user: UserInfo, namespace: string, name: string) {
      if (!user.username) return false;
      return review(user, { verb: "use", group: GROUP, resource: PLURAL, name, namespace });
    },
  };
}

async function getOrUndefined<T>(rest: KubeRest, path: string): Promise<T | undefined> {
  try {
    return await rest.get<T>(path);
  } catch (e) {
    if (isNotFound(e)) return undefined;
    throw e;
  }
}
