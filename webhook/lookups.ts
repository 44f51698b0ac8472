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
import { subjectAccessReview } from "../shells/kube/authorization.ts";
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
/**
 * A Deployment of 50 replicas asks the same question 50 times within a
 * second: answers are kept for a few seconds (the API server's own webhook
 * authorizer caches for minutes), so an RBAC change takes effect within
 * SAR_CACHE_TTL_MS. Keyed by everything the review sends.
 */
export const SAR_CACHE_TTL_MS = 5_000;
const SAR_CACHE_ENTRIES = 10_000;

export function createAdmissionLookups(rest: KubeRest, cachedTask?: TaskCacheLookup): AdmissionLookups {
  const decisions = new Map<string, { allowed: boolean; until: number }>();
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
      const key = JSON.stringify([user.username, user.uid, user.groups, user.extra, namespace, name]);
      const hit = decisions.get(key);
      if (hit && hit.until > Date.now()) return hit.allowed;
      const review = await subjectAccessReview(rest, user, {
        verb: "use",
        group: GROUP,
        resource: PLURAL,
        name,
        namespace,
      });
      if (decisions.size >= SAR_CACHE_ENTRIES) decisions.delete(decisions.keys().next().value as string);
      decisions.set(key, { allowed: review.allowed, until: Date.now() + SAR_CACHE_TTL_MS });
      return review.allowed;
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
