/**
 * Identity injection: the minimal JSONPatch (RFC 6902) that gives an opted-in
 * pod its task's credential. One read-only projected volume `custody-svid`
 * (the task's credential Secret and the namespace's trust bundle ConfigMap),
 * mounted read-only at SVID_MOUNT_PATH into every container (or only those
 * named by the `custody.dev/inject-containers` annotation), and environment
 * variables naming the SPIFFE ID and the files.
 *
 * Idempotent by construction: the API server re-invokes the webhook when a
 * later mutator changes the pod (reinvocationPolicy IfNeeded), so everything
 * already present with exactly our content is left alone, and anything
 * present under one of our names with other content is refused: a pod that
 * brings its own `custody-svid` volume or CUSTODY_* variable would otherwise
 * make us either overwrite the author's intent or ship a pod that reads
 * something else than its credential.
 *
 * Pure: no I/O; the pod is untrusted JSON, so every field is checked for shape.
 */

import { ValidationError } from "../errors.ts";
import { audienceFileName, TOKEN_EXCHANGE_FILE } from "../jwt/audience-files.ts";
import { CREDENTIAL_SECRET_PREFIX, TRUST_BUNDLE_CONFIGMAP } from "../names.ts";

/** The pod annotation naming the containers to inject (comma-separated); absent: all regular containers. */
export const INJECT_CONTAINERS_ANNOTATION = "custody.dev/inject-containers";
export const SVID_VOLUME_NAME = "custody-svid";
export const SVID_MOUNT_PATH = "/var/run/secrets/custody.dev/svid";
/**
 * Read-only for owner and group. The kubelet writes projected files as root;
 * a container running as another user reads them through the pod's
 * `securityContext.fsGroup` (the kubelet gives the files that group), which
 * injectionWarnings() points out when it looks missing.
 */
export const SVID_FILE_MODE = 0o440;

/** The files in the volume. */
export const SVID_FILES = {
  /** Leaf certificate then intermediates (PEM). */
  cert: "tls.crt",
  /** PKCS#8 private key (PEM). */
  key: "tls.key",
  /** Trust anchors (PEM). */
  bundle: "ca.crt",
  /** SPIFFE trust bundle (JWKS JSON) of the trust domain. */
  trustBundleSpiffe: "bundle.spiffe",
  /** Revoked serials and SPIFFE IDs, one per line (absent until something is revoked). */
  revoked: "revoked.txt",
} as const;

/** The environment variables set in injected containers. */
export const ENV_SPIFFE_ID = "CUSTODY_SPIFFE_ID";
export const ENV_SVID_CERT = "CUSTODY_SVID_CERT";
export const ENV_SVID_KEY = "CUSTODY_SVID_KEY";
export const ENV_SVID_BUNDLE = "CUSTODY_SVID_BUNDLE";
export const ENV_TRUST_BUNDLE_SPIFFE = "CUSTODY_TRUST_BUNDLE_SPIFFE";
export const INJECTED_ENV_NAMES = [
  ENV_SPIFFE_ID,
  ENV_SVID_CERT,
  ENV_SVID_KEY,
  ENV_SVID_BUNDLE,
  ENV_TRUST_BUNDLE_SPIFFE,
] as const;

/** Structurally the webhook's JsonPatchOperation (core cannot import webhook/). */
export interface PatchOperation {
  op: "add" | "remove" | "replace" | "test";
  path: string;
  value?: unknown;
}

export interface InjectionTarget {
  /** The task's name (the opt-in label's value). */
  task: string;
  /** The task's SPIFFE ID (buildTaskSpiffeId). */
  spiffeId: string;
  /** Containers to inject; when absent, the pod's annotation decides (or all regular containers). */
  containers?: readonly string[];
  /** The task's spec.audiences: each one's JWT-SVID, and the token-exchange one, are files of the volume too. */
  audiences?: readonly string[];
}

/** Where the pod sits in the object being admitted: a pod is at the root, a workload's template under it. */
export interface InjectionLocation {
  /** JSON Pointer of the pod-like object (e.g. "/spec/template"); "" for a pod. */
  pointer: string;
  /** Field path prefix for messages (e.g. "spec.template."); "" for a pod. */
  field: string;
}

const AT_ROOT: InjectionLocation = { pointer: "", field: "" };

/** The JWT-SVID files of a task that names audiences (docs/jwt-svid.md); none otherwise. */
function jwtSvidItems(audiences: readonly string[]): Array<{ key: string; path: string }> {
  if (audiences.length === 0) return [];
  return [TOKEN_EXCHANGE_FILE, ...audiences.map(audienceFileName)].map((f) => ({ key: f, path: f }));
}

export function svidVolume(task: string, audiences: readonly string[] = []): Record<string, unknown> {
  return {
    name: SVID_VOLUME_NAME,
    projected: {
      defaultMode: SVID_FILE_MODE,
      sources: [
        {
          // Not optional: the kubelet holds the pod in ContainerCreating until
          // the operator has written the credential, rather than starting an
          // agent without one.
          secret: {
            name: `${CREDENTIAL_SECRET_PREFIX}${task}`,
            items: [
              { key: "tls.crt", path: SVID_FILES.cert },
              { key: "tls.key", path: SVID_FILES.key },
              { key: "ca.crt", path: SVID_FILES.bundle },
              ...jwtSvidItems(audiences),
            ],
          },
        },
        {
          configMap: {
            name: TRUST_BUNDLE_CONFIGMAP,
            items: [{ key: "bundle.spiffe", path: SVID_FILES.trustBundleSpiffe }],
          },
        },
        {
          // A second source of the same ConfigMap: the operator writes
          // revoked.txt only once something is revoked, and a required item
          // whose key is missing would keep the pod from starting.
          configMap: {
            name: TRUST_BUNDLE_CONFIGMAP,
            items: [{ key: "revoked.txt", path: SVID_FILES.revoked }],
            optional: true,
          },
        },
      ],
    },
  };
}

export function svidVolumeMount(): Record<string, unknown> {
  return { name: SVID_VOLUME_NAME, mountPath: SVID_MOUNT_PATH, readOnly: true };
}

export function injectedEnv(spiffeId: string): Array<{ name: string; value: string }> {
  return [
    { name: ENV_SPIFFE_ID, value: spiffeId },
    { name: ENV_SVID_CERT, value: `${SVID_MOUNT_PATH}/${SVID_FILES.cert}` },
    { name: ENV_SVID_KEY, value: `${SVID_MOUNT_PATH}/${SVID_FILES.key}` },
    { name: ENV_SVID_BUNDLE, value: `${SVID_MOUNT_PATH}/${SVID_FILES.bundle}` },
    { name: ENV_TRUST_BUNDLE_SPIFFE, value: `${SVID_MOUNT_PATH}/${SVID_FILES.trustBundleSpiffe}` },
  ];
}

type Json = Record<string, unknown>;

interface ContainerRef {
  /** "containers" or "initContainers". */
  list: "containers" | "initContainers";
  index: number;
  name: string;
  container: Json;
}

/**
 * The patch that injects the identity, empty when the pod already carries
 * exactly our volume, mounts and variables. Throws ValidationError naming the
 * field and rule when the pod cannot be injected without overriding its
 * author (a conflicting name or path, an unknown container in the annotation).
 */
export function injectionPatch(
  pod: unknown,
  target: InjectionTarget,
  at: InjectionLocation = AT_ROOT,
): PatchOperation[] {
  const spec = objectAt(pod, "spec", `${at.field}spec`);
  const selected = selectContainers(pod, spec, target.containers, at);
  const patch: PatchOperation[] = [];

  // The volume.
  const volumesField = `${at.field}spec.volumes`;
  const volumes = arrayAt(spec, "volumes", volumesField);
  const expectedVolume = svidVolume(target.task, target.audiences);
  const ours = volumes.filter((v) => isObject(v) && v.name === SVID_VOLUME_NAME);
  if (ours.length === 0) {
    patch.push(
      volumes.length === 0 && !Array.isArray(spec.volumes)
        ? { op: "add", path: `${at.pointer}/spec/volumes`, value: [expectedVolume] }
        : { op: "add", path: `${at.pointer}/spec/volumes/-`, value: expectedVolume },
    );
  } else if (ours.length > 1 || !sameValue(ours[0], expectedVolume)) {
    throw reserved(
      `${volumesField}[${SVID_VOLUME_NAME}]`,
      `is already defined with other content; Custody owns the volume name ${SVID_VOLUME_NAME}`,
    );
  }

  // Containers not selected must not mount our volume: only selected ones wear the identity.
  const selectedKeys = new Set(selected.map((c) => `${c.list}/${c.index}`));
  for (const c of allContainers(spec, at)) {
    if (selectedKeys.has(`${c.list}/${c.index}`)) continue;
    const mounts = arrayAt(c.container, "volumeMounts", `${at.field}spec.${c.list}[${c.name}].volumeMounts`);
    if (mounts.some((m) => isObject(m) && m.name === SVID_VOLUME_NAME)) {
      throw new ValidationError(
        `${at.field}spec.${c.list}[${c.name}].volumeMounts[${SVID_VOLUME_NAME}]`,
        "inject-containers",
        `${at.field}spec.${c.list}[${c.name}].volumeMounts[${SVID_VOLUME_NAME}]: container ${c.name} mounts ` +
          `the identity volume but is not selected for injection (see the ${INJECT_CONTAINERS_ANNOTATION} ` +
          `annotation) (rule inject-containers)`,
      );
    }
  }

  const expectedMount = svidVolumeMount();
  const expectedEnv = injectedEnv(target.spiffeId);
  for (const c of selected) {
    const base = `${at.pointer}/spec/${c.list}/${c.index}`;
    const field = `${at.field}spec.${c.list}[${c.name}]`;

    const mounts = arrayAt(c.container, "volumeMounts", `${field}.volumeMounts`);
    let mounted = false;
    for (const m of mounts) {
      if (!isObject(m)) continue;
      if (m.name === SVID_VOLUME_NAME) {
        if (!sameValue(m, expectedMount)) {
          throw reserved(
            `${field}.volumeMounts[${SVID_VOLUME_NAME}]`,
            `is already mounted otherwise; Custody mounts it read-only at ${SVID_MOUNT_PATH}`,
          );
        }
        mounted = true;
      } else if (typeof m.mountPath === "string" && samePath(m.mountPath, SVID_MOUNT_PATH)) {
        throw new ValidationError(
          `${field}.volumeMounts[${String(m.name)}]`,
          "reserved-path",
          `${field}.volumeMounts[${String(m.name)}]: mountPath ${SVID_MOUNT_PATH} is reserved for the ` +
            `Custody identity volume (rule reserved-path)`,
        );
      }
    }
    if (!mounted) {
      patch.push(
        mounts.length === 0 && !Array.isArray(c.container.volumeMounts)
          ? { op: "add", path: `${base}/volumeMounts`, value: [expectedMount] }
          : { op: "add", path: `${base}/volumeMounts/-`, value: expectedMount },
      );
    }

    const env = arrayAt(c.container, "env", `${field}.env`);
    const missing: Array<{ name: string; value: string }> = [];
    for (const want of expectedEnv) {
      const present = env.filter((e) => isObject(e) && e.name === want.name);
      if (present.length === 0) {
        missing.push(want);
        continue;
      }
      // Never echo the present value: an author may have put something private there.
      if (present.some((e) => !sameValue(e, want))) {
        throw reserved(`${field}.env[${want.name}]`, `is already set otherwise; Custody sets ${want.name}`);
      }
    }
    if (missing.length > 0) {
      if (env.length === 0 && !Array.isArray(c.container.env)) {
        patch.push({ op: "add", path: `${base}/env`, value: missing });
      } else {
        for (const e of missing) patch.push({ op: "add", path: `${base}/env/-`, value: e });
      }
    }
  }
  return patch;
}

/**
 * Advice for the requester (admission warnings), never a refusal: the files
 * are mode 0440 owned by root, so a container that runs as another user reads
 * them only through the pod's fsGroup.
 */
export function injectionWarnings(pod: unknown, target: InjectionTarget): string[] {
  const spec = isObject(pod) && isObject(pod.spec) ? pod.spec : undefined;
  if (!spec) return [];
  const podSecurity = isObject(spec.securityContext) ? spec.securityContext : {};
  if (podSecurity.fsGroup !== undefined && podSecurity.fsGroup !== null) return [];
  let selected: ContainerRef[];
  try {
    selected = selectContainers(pod, spec, target.containers, AT_ROOT);
  } catch {
    return [];
  }
  const nonRoot = (sc: unknown): boolean | undefined => {
    if (!isObject(sc)) return undefined;
    if (typeof sc.runAsUser === "number") return sc.runAsUser !== 0;
    if (sc.runAsNonRoot === true) return true;
    return undefined;
  };
  const names = selected
    .filter((c) => nonRoot(c.container.securityContext) ?? nonRoot(podSecurity) ?? false)
    .map((c) => c.name);
  if (names.length === 0) return [];
  return [
    `spec.securityContext.fsGroup is not set and container(s) ${names.join(", ")} run as non-root: the ` +
      `Custody credential files are mode 0440 owned by root; set fsGroup so they can read them`,
  ];
}

/** Parses the inject-containers annotation: names, trimmed, without empties and duplicates. */
export function parseInjectContainers(value: string): string[] {
  return [
    ...new Set(
      value
        .split(",")
        .map((s) => s.trim())
        .filter((s) => s.length > 0),
    ),
  ];
}

function selectContainers(
  pod: unknown,
  spec: Json,
  explicit: readonly string[] | undefined,
  at: InjectionLocation,
): ContainerRef[] {
  const all = allContainers(spec, at);
  let names: readonly string[] | undefined = explicit;
  let source = "containers";
  if (names === undefined) {
    const metadata = isObject(pod) && isObject(pod.metadata) ? pod.metadata : {};
    const annotations = isObject(metadata.annotations) ? metadata.annotations : {};
    const value = annotations[INJECT_CONTAINERS_ANNOTATION];
    source = `${at.field}metadata.annotations[${INJECT_CONTAINERS_ANNOTATION}]`;
    if (value !== undefined && value !== null) {
      if (typeof value !== "string") throw annotationError(source, "must be a string");
      names = parseInjectContainers(value);
      if (names.length === 0) throw annotationError(source, "names no container");
    }
  }
  // Default: the regular containers. Init containers (e.g. a native sidecar)
  // are injected only when named, since most of them do not need an identity.
  if (names === undefined) return all.filter((c) => c.list === "containers");
  const byName = new Map(all.map((c) => [c.name, c]));
  const selected: ContainerRef[] = [];
  for (const name of new Set(names)) {
    const c = byName.get(name);
    if (!c) {
      const known = all.map((k) => k.name).join(", ") || "none";
      throw annotationError(
        source,
        `names container ${JSON.stringify(name)}, which the pod does not have (it has: ${known})`,
      );
    }
    selected.push(c);
  }
  return selected;
}

function allContainers(spec: Json, at: InjectionLocation): ContainerRef[] {
  const out: ContainerRef[] = [];
  for (const list of ["containers", "initContainers"] as const) {
    arrayAt(spec, list, `${at.field}spec.${list}`).forEach((container, index) => {
      if (!isObject(container)) {
        throw new ValidationError(
          `${at.field}spec.${list}[${index}]`,
          "shape",
          `${at.field}spec.${list}[${index}]: must be an object (rule shape)`,
        );
      }
      out.push({ list, index, name: typeof container.name === "string" ? container.name : "", container });
    });
  }
  return out;
}

function annotationError(field: string, message: string): ValidationError {
  return new ValidationError(field, "unknown-container", `${field}: ${message} (rule unknown-container)`);
}

function reserved(field: string, message: string): ValidationError {
  return new ValidationError(field, "reserved-name", `${field}: ${message} (rule reserved-name)`);
}

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function objectAt(parent: unknown, key: string, field: string): Json {
  const v = isObject(parent) ? parent[key] : undefined;
  if (!isObject(v)) throw new ValidationError(field, "shape", `${field}: must be an object (rule shape)`);
  return v;
}

/** An array field; absent or null reads as empty (the caller then adds the whole array). */
function arrayAt(parent: Json, key: string, field: string): unknown[] {
  const v = parent[key];
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new ValidationError(field, "shape", `${field}: must be a list (rule shape)`);
  return v;
}

const samePath = (a: string, b: string): boolean => a.replace(/\/+$/, "") === b.replace(/\/+$/, "");

/**
 * Deep equality where a member that is absent, null, false or "" equals an
 * absent one: the API server's defaulting and serialisation may add such
 * members (e.g. `optional: false`) between invocations, and they mean nothing.
 */
export function sameValue(a: unknown, b: unknown): boolean {
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    return a.every((x, i) => sameValue(x, b[i]));
  }
  if (isObject(a) && isObject(b)) {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    for (const k of keys) {
      const x = a[k];
      const y = b[k];
      if (isNothing(x) && isNothing(y)) continue;
      if (!sameValue(x, y)) return false;
    }
    return true;
  }
  return a === b;
}

const isNothing = (v: unknown): boolean => v === undefined || v === null || v === false || v === "";
