// SubjectAccessReview: "may this authenticated user do this?", answered by
// the API server's own authorizers (RBAC and whatever else is configured).
// Admission asks it with the request's userInfo, never with our identity.
import type { KubeRest } from "./rest.ts";

export interface ReviewedUser {
  username?: string;
  uid?: string;
  groups?: string[];
  extra?: Record<string, string[]>;
}

export interface ResourceAttributes {
  verb: string;
  group: string;
  resource: string;
  name?: string;
  namespace?: string;
  subresource?: string;
}

export async function subjectAccessReview(
  rest: KubeRest,
  user: ReviewedUser,
  attributes: ResourceAttributes,
): Promise<{ allowed: boolean; reason?: string }> {
  const body = {
    apiVersion: "authorization.k8s.io/v1",
    kind: "SubjectAccessReview",
    spec: {
      user: user.username,
      ...(user.uid ? { uid: user.uid } : {}),
      ...(user.groups ? { groups: user.groups } : {}),
      ...(user.extra ? { extra: user.extra } : {}),
      resourceAttributes: attributes,
    },
  };
  const res = await rest.post<{ status?: { allowed?: boolean; denied?: boolean; reason?: string } }>(
    "/apis/authorization.k8s.io/v1/subjectaccessreviews",
    body,
  );
  const allowed = res.status?.allowed === true && res.status?.denied !== true;
  return { allowed, ...(res.status?.reason ? { reason: res.status.reason } : {}) };
}

/**
 * SubjectAccessReviews with a short-lived memo: a Deployment of 50 replicas,
 * or a burst of tasks created by one user, asks the same question many times
 * within a second. Answers are kept for `ttlMs` (the API server's own webhook
 * authorizer caches for minutes), so an RBAC change takes effect within it.
 * Keyed by everything the review sends.
 */
export function createCachedAccessReview(rest: KubeRest, ttlMs = 5_000, capacity = 10_000) {
  const decisions = new Map<string, { allowed: boolean; until: number }>();
  // One review in flight per question: a burst of 200 pods a second would
  // otherwise send a review for every pod admitted before the first answer
  // (and again each time the answer expires), just when the API server is busiest.
  const inflight = new Map<string, Promise<boolean>>();
  return async (user: ReviewedUser, attributes: ResourceAttributes): Promise<boolean> => {
    const key = JSON.stringify([user.username, user.uid, user.groups, user.extra, attributes]);
    const hit = decisions.get(key);
    const now = Date.now();
    if (hit && hit.until > now) return hit.allowed;
    const pending = inflight.get(key);
    if (pending) return pending;
    const asked = subjectAccessReview(rest, user, attributes)
      .then(({ allowed }) => {
        if (decisions.size >= capacity) decisions.delete(decisions.keys().next().value as string);
        decisions.set(key, { allowed, until: Date.now() + ttlMs });
        return allowed;
      })
      .finally(() => inflight.delete(key));
    inflight.set(key, asked);
    return asked;
  };
}
