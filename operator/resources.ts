// Names, labels and API paths of the objects the operator reads and writes.
import { GROUP, PLURAL, VERSION } from "../core/api/v1alpha1.ts";

export const FINALIZER = "custody.dev/revoke-credential";
export const MANAGED_BY_LABEL = "app.kubernetes.io/managed-by";
export const MANAGED_BY = "custody";
export const COMPONENT_LABEL = "custody.dev/component";
/** The pod opt-in label; also set on a task's credential Secret to name its task. */
export const TASK_LABEL = "custody.dev/agent-task";
export const SERIAL_ANNOTATION = "custody.dev/serial";
export const SPIFFE_ID_ANNOTATION = "custody.dev/spiffe-id";
export const TRUST_BUNDLE_CONFIGMAP = "custody-trust-bundle";
/**
 * Credential Secrets have a reserved name pattern so that a cluster-wide
 * admission check can refuse pods that reference one directly.
 */
export const CREDENTIAL_SECRET_PREFIX = "custody-svid-";

export const credentialSecretName = (task: string): string => `${CREDENTIAL_SECRET_PREFIX}${task}`;

const enc = encodeURIComponent;
export const taskCollectionPath = (ns?: string): string =>
  ns ? `/apis/${GROUP}/${VERSION}/namespaces/${enc(ns)}/${PLURAL}` : `/apis/${GROUP}/${VERSION}/${PLURAL}`;
export const taskPath = (ns: string, name: string): string => `${taskCollectionPath(ns)}/${enc(name)}`;
export const taskStatusPath = (ns: string, name: string): string => `${taskPath(ns, name)}/status`;
export const secretPath = (ns: string, name?: string): string =>
  `/api/v1/namespaces/${enc(ns)}/secrets${name ? `/${enc(name)}` : ""}`;
export const configMapPath = (ns: string, name?: string): string =>
  `/api/v1/namespaces/${enc(ns)}/configmaps${name ? `/${enc(name)}` : ""}`;
export const eventsPath = (ns: string): string => `/apis/events.k8s.io/v1/namespaces/${enc(ns)}/events`;
