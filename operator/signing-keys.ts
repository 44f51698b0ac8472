// The operator's P-256 signing keys (provenance, admission records), each in
// its own Secret in the operator's namespace. Several replicas may start at
// once: creation is create-if-absent, and the loser of the race loads the
// winner's key, so every replica signs with the same key and kid.
import { createPrivateKey, generateKeyPairSync, type KeyObject, randomBytes } from "node:crypto";
import { PROVENANCE_KEY_SECRET, PROVENANCE_SALT_SECRET } from "../core/names.ts";
import { type ProvenanceSalt, provenanceSalt } from "../core/provenance/events.ts";
import { jwkThumbprint } from "../core/provenance/sign.ts";

import { isAlreadyExists, isNotFound, type KubeRest } from "../shells/kube/rest.ts";
import type { Logger } from "../shells/log.ts";
import { COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL, secretPath } from "./resources.ts";

export async function loadOrCreateSigningKey(
  rest: KubeRest,
  namespace: string,
  log: Logger,
  secretName = PROVENANCE_KEY_SECRET,
  component = "provenance-key",
): Promise<KeyObject> {
  const path = secretPath(namespace, secretName);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const s = await rest.get<{ data?: Record<string, string> }>(path);
      const pem = s.data?.["key.pem"];
      if (!pem) throw new Error(`Secret ${namespace}/${secretName}: missing key.pem`);
      return createPrivateKey(Buffer.from(pem, "base64").toString("utf8"));
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const pem = privateKey.export({ format: "pem", type: "pkcs8" }).toString();
    try {
      await rest.post(secretPath(namespace), {
        apiVersion: "v1",
        kind: "Secret",
        metadata: {
          name: secretName,
          namespace,
          labels: { [MANAGED_BY_LABEL]: MANAGED_BY, [COMPONENT_LABEL]: component },
          annotations: { "custody.dev/key-id": jwkThumbprint(publicKey) },
        },
        data: { "key.pem": Buffer.from(pem).toString("base64") },
      });
      log.info("signing key generated", { secret: secretName, kid: jwkThumbprint(publicKey) });
      return privateKey;
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
    }
  }
  throw new Error(`Secret ${namespace}/${secretName}: could not load or create`);
}

/**
 * The salt of the digests that stand for sensitive values in events (32
 * random bytes), in its own Secret, created if absent like the keys above.
 * Whoever holds it can confirm a guessed value; the stream alone cannot.
 */
export async function loadOrCreateSalt(
  rest: KubeRest,
  namespace: string,
  log: Logger,
): Promise<ProvenanceSalt> {
  const path = secretPath(namespace, PROVENANCE_SALT_SECRET);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const s = await rest.get<{ data?: Record<string, string> }>(path);
      const salt = s.data?.salt;
      if (!salt) throw new Error(`Secret ${namespace}/${PROVENANCE_SALT_SECRET}: missing salt`);
      return provenanceSalt(Buffer.from(salt, "base64"));
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    const salt = provenanceSalt(randomBytes(32));
    try {
      await rest.post(secretPath(namespace), {
        apiVersion: "v1",
        kind: "Secret",
        metadata: {
          name: PROVENANCE_SALT_SECRET,
          namespace,
          labels: { [MANAGED_BY_LABEL]: MANAGED_BY, [COMPONENT_LABEL]: "provenance-salt" },
          annotations: { "custody.dev/salt-id": salt.id },
        },
        data: { salt: Buffer.from(salt.key).toString("base64") },
      });
      log.info("provenance salt generated", { secret: PROVENANCE_SALT_SECRET, saltId: salt.id });
      return salt;
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
    }
  }
  throw new Error(`Secret ${namespace}/${PROVENANCE_SALT_SECRET}: could not load or create`);
}
