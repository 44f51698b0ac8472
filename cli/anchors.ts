// Where the CLI gets what verification needs besides the topic: the
// provenance public keys and the checkpoints anchored outside Kafka.
//
// Keys, first found wins:
//   1. --keys FILE: a JWK Set ({"keys": [...]}), one JWK, or PEM public keys;
//   2. jwks.json in the ConfigMap custody-provenance of the operator's
//      namespace (the leader publishes its public key there);
//   3. the public half of the signing key Secret custody-provenance-signing-key,
//      for a user who may read it (an installation from before the ConfigMap).
//      Only the public key is kept; the private key is never printed or stored.
// Checkpoints: every checkpoint.* entry of that ConfigMap, plus --checkpoint.
import { createPrivateKey, createPublicKey, type JsonWebKey, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import { CHECKPOINT_PREFIX, JWKS_KEY, PROVENANCE_CONFIGMAP, PROVENANCE_KEY_SECRET } from "../core/names.ts";
import { createKeyRing } from "../core/provenance/sign.ts";
import type { KubeRest } from "../shells/kube/rest.ts";

export const DEFAULT_OPERATOR_NAMESPACE = "custody-system";

export interface VerificationKeys {
  readonly keys: Map<string, KeyObject>;
  /** Where they came from, for the report (never key material). */
  readonly source: string;
}

/** Reads --keys FILE: a JWK Set, a JSON array of JWKs, one JWK, or PEM public (or private) keys. */
export function readKeysFile(file: string): VerificationKeys {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new Error(`--keys ${file}: ${(err as Error).message}`);
  }
  const keys: KeyObject[] = [];
  if (text.includes("-----BEGIN")) {
    for (const pem of text.match(/-----BEGIN [A-Z ]+-----[\s\S]+?-----END [A-Z ]+-----/g) ?? []) {
      try {
        // A private PEM is accepted for convenience; only its public half is used.
        keys.push(pem.includes("PRIVATE") ? createPublicKey(createPrivateKey(pem)) : createPublicKey(pem));
      } catch (err) {
        throw new Error(`--keys ${file}: a PEM block is not a key (${(err as Error).message})`);
      }
    }
    return { keys: ringOf(keys, `--keys ${file}`), source: file };
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new Error(`--keys ${file}: neither JSON (a JWK Set) nor PEM`);
  }
  return { keys: jwksRing(parsed, `--keys ${file}`), source: file };
}

/** A JWK Set, an array of JWKs or one JWK; a JWK with a kid must be the key that kid names. */
export function jwksRing(parsed: unknown, where: string): Map<string, KeyObject> {
  const list = Array.isArray(parsed)
    ? parsed
    : typeof parsed === "object" && parsed !== null && Array.isArray((parsed as { keys?: unknown }).keys)
      ? (parsed as { keys: unknown[] }).keys
      : [parsed];
  const withKid = new Map<string, JsonWebKey>();
  const withoutKid: JsonWebKey[] = [];
  for (const k of list) {
    if (typeof k !== "object" || k === null) throw new Error(`${where}: not a JWK: ${JSON.stringify(k)}`);
    const jwk = k as JsonWebKey & { kid?: unknown };
    if (typeof jwk.kid === "string") withKid.set(jwk.kid, jwk);
    else withoutKid.push(jwk);
  }
  let ring: Map<string, KeyObject>;
  try {
    ring = new Map([...createKeyRing(withKid), ...createKeyRing(withoutKid)]);
  } catch (err) {
    throw new Error(`${where}: ${(err as Error).message}`);
  }
  if (ring.size === 0) throw new Error(`${where}: no keys`);
  return ring;
}

function ringOf(keys: KeyObject[], where: string): Map<string, KeyObject> {
  if (keys.length === 0) throw new Error(`${where}: no keys`);
  try {
    return new Map(createKeyRing(keys));
  } catch (err) {
    throw new Error(`${where}: ${(err as Error).message}`);
  }
}

/** What the operator anchored in the cluster, as read. */
export interface Anchors {
  readonly keys: VerificationKeys | null;
  readonly checkpoints: unknown[];
  /** Why keys or checkpoints could not be read (shown as a warning). */
  readonly problems: string[];
}

interface ConfigMap {
  data?: Record<string, string>;
}

/** Reads keys and checkpoints from the operator's namespace; never throws for a missing or forbidden object. */
export async function readAnchors(rest: KubeRest, namespace: string, wantKeys: boolean): Promise<Anchors> {
  const problems: string[] = [];
  const checkpoints: unknown[] = [];
  let keys: VerificationKeys | null = null;
  const cmPath = `/api/v1/namespaces/${encodeURIComponent(namespace)}/configmaps/${PROVENANCE_CONFIGMAP}`;
  let cm: ConfigMap | undefined;
  try {
    cm = await rest.get<ConfigMap>(cmPath);
  } catch (err) {
    problems.push(`ConfigMap ${namespace}/${PROVENANCE_CONFIGMAP}: ${describe(err)}`);
  }
  for (const [key, text] of Object.entries(cm?.data ?? {})) {
    if (!key.startsWith(CHECKPOINT_PREFIX)) continue;
    try {
      checkpoints.push(JSON.parse(text));
    } catch {
      // Handed to verify as is: it reports a checkpoint it cannot read as malformed.
      checkpoints.push(text);
    }
  }
  if (wantKeys && cm?.data?.[JWKS_KEY] !== undefined) {
    const where = `ConfigMap ${namespace}/${PROVENANCE_CONFIGMAP} ${JWKS_KEY}`;
    try {
      keys = { keys: jwksRing(JSON.parse(cm.data[JWKS_KEY]), where), source: where };
    } catch (err) {
      problems.push(err instanceof SyntaxError ? `${where}: not JSON` : (err as Error).message);
    }
  }
  if (wantKeys && keys === null) {
    const where = `Secret ${namespace}/${PROVENANCE_KEY_SECRET}`;
    try {
      const secret = await rest.get<ConfigMap>(
        `/api/v1/namespaces/${encodeURIComponent(namespace)}/secrets/${PROVENANCE_KEY_SECRET}`,
      );
      const pem = secret.data?.["key.pem"];
      if (pem === undefined) problems.push(`${where}: no key.pem`);
      else {
        // The public half only; the private KeyObject goes out of scope here.
        const publicKey = createPublicKey(createPrivateKey(Buffer.from(pem, "base64").toString("utf8")));
        keys = { keys: ringOf([publicKey], where), source: `${where} (public half)` };
      }
    } catch (err) {
      problems.push(`${where}: ${describe(err)}`);
    }
  }
  return { keys, checkpoints, problems };
}

/**
 * A --checkpoint value: JSON (an object, or an array of them) given inline,
 * or the name of a file holding it.
 */
export function readCheckpointFlag(value: string): unknown[] {
  const text = /^\s*[[{]/.test(value) ? value : readCheckpointFile(value);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new Error(`--checkpoint ${value.length > 80 ? `${value.slice(0, 77)}...` : value}: not JSON`);
  }
  return Array.isArray(parsed) ? parsed : [parsed];
}

function readCheckpointFile(file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (err) {
    throw new Error(`--checkpoint ${file}: ${(err as Error).message}`);
  }
}

function describe(err: unknown): string {
  const e = err as { code?: number; message?: string };
  if (e.code === 404) return "not found";
  if (e.code === 403) return "forbidden";
  return e.message ?? String(err);
}
