// Names, labels and API paths of the objects the operator reads and writes.
import { createHash } from "node:crypto";
import { GROUP, PLURAL, VERSION } from "../core/api/v1alpha1.ts";

export const FINALIZER = "custody.dev/revoke-credential";
export {
  COMPONENT_LABEL,
  CREDENTIAL_SECRET_PREFIX,
  credentialSecretName,
  MANAGED_BY,
  MANAGED_BY_LABEL,
  TASK_LABEL,
  TRUST_BUNDLE_CONFIGMAP,
} from "../core/names.ts";
export const SERIAL_ANNOTATION = "custody.dev/serial";
export const SPIFFE_ID_ANNOTATION = "custody.dev/spiffe-id";
/** On a credential Secret: which CA issued it (caFingerprint), so an installation knows its own credentials. */
export const ISSUER_CA_ANNOTATION = "custody.dev/issuer-ca";
/** SHA-256 (hex, 32 digits) of a CA certificate's DER. */
export const caFingerprint = (der: Uint8Array): string =>
  createHash("sha256").update(der).digest("hex").slice(0, 32);

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
/** The status subresource of an AgentPolicy (namespaced) or ClusterAgentPolicy. */
export const policyStatusPath = (p: {
  kind: string;
  metadata: { name: string; namespace?: string };
}): string =>
  p.kind === "ClusterAgentPolicy"
    ? `/apis/${GROUP}/${VERSION}/clusteragentpolicies/${enc(p.metadata.name)}/status`
    : `/apis/${GROUP}/${VERSION}/namespaces/${enc(p.metadata.namespace ?? "")}/agentpolicies/${enc(p.metadata.name)}/status`;
