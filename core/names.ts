// Names of the objects, labels and annotations that the operator, the
// webhook and the CLI all mean the same thing by. One home, below every
// entry point, so none of them copies a string or imports another's module.

export const MANAGED_BY_LABEL = "app.kubernetes.io/managed-by";
export const MANAGED_BY = "custody";
export const COMPONENT_LABEL = "custody.dev/component";
/** The pod opt-in label; also set on a task's credential Secret to name its task. */
export const TASK_LABEL = "custody.dev/agent-task";
export const TRUST_BUNDLE_CONFIGMAP = "custody-trust-bundle";
/**
 * Credential Secrets have a reserved name pattern so that a cluster-wide
 * admission check can refuse pods that reference one directly.
 */
export const CREDENTIAL_SECRET_PREFIX = "custody-svid-";
export const credentialSecretName = (task: string): string => `${CREDENTIAL_SECRET_PREFIX}${task}`;

// Provenance outside Kafka (operator/provenance-anchor.ts writes, the CLI reads).
export const PROVENANCE_CONFIGMAP = "custody-provenance";
export const JWKS_KEY = "jwks.json";
export const CHECKPOINT_PREFIX = "checkpoint.";
export const PROVENANCE_KEY_SECRET = "custody-provenance-signing-key";
/** Signs requester records and workload stamps; only Custody's service account may read it. */
export const ADMISSION_KEY_SECRET = "custody-admission-signing-key";
/** The salt of the HMAC digests that stand for sensitive values in provenance events. */
export const PROVENANCE_SALT_SECRET = "custody-provenance-salt";
