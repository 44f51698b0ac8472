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
