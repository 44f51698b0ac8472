// The operator's P-256 signing keys (provenance, admission records) and the
// provenance salt, each in its own Secret in the operator's namespace.
// Several replicas may start at once: creation is create-if-absent, and the
// loser of the race loads the winner's, so every replica signs with the same
// key and kid (and digests under the same salt).
import { createPrivateKey, generateKeyPairSync, type KeyObject, randomBytes } from "node:crypto";
import { PROVENANCE_KEY_SECRET, PROVENANCE_SALT_SECRET } from "../core/names.ts";
import { type ProvenanceSalt, provenanceSalt } from "../core/provenance/events.ts";
import { jwkThumbprint } from "../core/provenance/sign.ts";

import { isAlreadyExists, isNotFound, type KubeRest } from "../shells/kube/rest.ts";
import type { Logger } from "../shells/log.ts";
import { COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL, secretPath } from "./resources.ts";

/** A value kept in a Secret: how to read it back, and how to make a new one. */
interface SecretValue<T> {
  /** The value from the Secret's data; throws when it is missing. */
  read(data: Record<string, string> | undefined): T;
  generate(): {
    value: T;
    data: Record<string, string>;
    /** Public facts about it (a kid, a salt id): on the Secret and in the log line. */
    annotations: Record<string, string>;
  };
}

async function loadOrCreateSecret<T>(
  rest: KubeRest,
  namespace: string,
  log: Logger,
  secretName: string,
  component: string,
  value: SecretValue<T>,
): Promise<T> {
  const path = secretPath(namespace, secretName);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const s = await rest.get<{ data?: Record<string, string> }>(path);
      return value.read(s.data);
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    const made = value.generate();
    try {
      await rest.post(
        secretPath(namespace),
        {
          apiVersion: "v1",
          kind: "Secret",
          metadata: {
            name: secretName,
            namespace,
            labels: { [MANAGED_BY_LABEL]: MANAGED_BY, [COMPONENT_LABEL]: component },
            annotations: made.annotations,
          },
          data: made.data,
        },
        // The response echoes the key: not read.
        { discardResponse: true },
      );
      log.info(`${component} generated`, { secret: secretName, ...made.annotations });
      return made.value;
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
    }
  }
  throw new Error(`Secret ${namespace}/${secretName}: could not load or create`);
}

export function loadOrCreateSigningKey(
  rest: KubeRest,
  namespace: string,
  log: Logger,
  secretName = PROVENANCE_KEY_SECRET,
  component = "provenance-key",
): Promise<KeyObject> {
  return loadOrCreateSecret(rest, namespace, log, secretName, component, {
    read: (data) => {
      const pem = data?.["key.pem"];
      if (!pem) throw new Error(`Secret ${namespace}/${secretName}: missing key.pem`);
      return createPrivateKey(Buffer.from(pem, "base64").toString("utf8"));
    },
    generate: () => {
      const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
      const pem = privateKey.export({ format: "pem", type: "pkcs8" }).toString();
      return {
        value: privateKey,
        data: { "key.pem": Buffer.from(pem).toString("base64") },
        annotations: { "custody.dev/key-id": jwkThumbprint(publicKey) },
      };
    },
  });
}

/**
 * The salt of the digests that stand for sensitive values in events (32
 * random bytes). Whoever holds it can confirm a guessed value; the stream
 * alone cannot.
 */
export function loadOrCreateSalt(rest: KubeRest, namespace: string, log: Logger): Promise<ProvenanceSalt> {
  return loadOrCreateSecret(rest, namespace, log, PROVENANCE_SALT_SECRET, "provenance-salt", {
    read: (data) => {
      if (!data?.salt) throw new Error(`Secret ${namespace}/${PROVENANCE_SALT_SECRET}: missing salt`);
      return provenanceSalt(Buffer.from(data.salt, "base64"));
    },
    generate: () => {
      const salt = provenanceSalt(randomBytes(32));
      return {
        value: salt,
        data: { salt: Buffer.from(salt.key).toString("base64") },
        annotations: { "custody.dev/salt-id": salt.id },
      };
    },
  });
}
