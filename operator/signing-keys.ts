// The operator's P-256 signing keys (provenance, admission records), each in
// its own Secret in the operator's namespace. Several replicas may start at
// once: creation is create-if-absent, and the loser of the race loads the
// winner's key, so every replica signs with the same key and kid.
import { createPrivateKey, generateKeyPairSync, type KeyObject } from "node:crypto";
import { PROVENANCE_KEY_SECRET } from "../core/names.ts";
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
