/**
 * The AdmissionReview (admission.k8s.io/v1) contract every Custody admission
 * handler implements. The HTTPS shell parses the review, calls the handler for
 * the path, and writes the response (JSONPatch base64-encoded, warnings,
 * status message). Handlers hold the decisions; the shell holds no rule.
 */

/** What the API server authenticated: the only facts about the requester. */
export interface UserInfo {
  username?: string;
  uid?: string;
  groups?: string[];
  /** For a bound service-account token: authentication.kubernetes.io/pod-name, pod-uid, node-name, ... */
  extra?: Record<string, string[]>;
}

export interface AdmissionRequest {
  uid: string;
  kind: { group: string; version: string; kind: string };
  resource: { group: string; version: string; resource: string };
  subResource?: string;
  /** Namespace of the object (absent for cluster-scoped objects). */
  namespace?: string;
  /** Empty on CREATE with generateName. */
  name?: string;
  operation: "CREATE" | "UPDATE" | "DELETE" | "CONNECT";
  userInfo: UserInfo;
  object?: unknown;
  oldObject?: unknown;
  dryRun?: boolean;
}

export interface JsonPatchOperation {
  op: "add" | "remove" | "replace" | "test";
  path: string;
  value?: unknown;
}

export interface AdmissionResult {
  allowed: boolean;
  /** Shown to the user on refusal: name the field and the rule. */
  message?: string;
  /** HTTP-style code for a refusal (403 forbidden, 400 bad request, 422 invalid). */
  code?: number;
  patch?: JsonPatchOperation[];
  warnings?: string[];
}

export type AdmissionHandler = (request: AdmissionRequest) => Promise<AdmissionResult>;

export const allow = (patch?: JsonPatchOperation[], warnings?: string[]): AdmissionResult => ({
  allowed: true,
  ...(patch && patch.length > 0 ? { patch } : {}),
  ...(warnings && warnings.length > 0 ? { warnings } : {}),
});

export const deny = (code: number, message: string): AdmissionResult => ({ allowed: false, code, message });

/** JSON Pointer escaping (RFC 6901) for one path segment, e.g. an annotation key. */
export const pointerSegment = (s: string): string => s.replaceAll("~", "~0").replaceAll("/", "~1");
