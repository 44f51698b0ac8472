// Loads the Custody CA from its Secret, or generates one on first start.
// Several replicas may start at once: creation is a create-if-absent, and the
// loser of the race loads the winner's CA.
import { randomBytes } from "node:crypto";
import {
  type CertificateAuthority,
  certificatesFromPem,
  generateCa,
  loadCa,
  serialFromRandom,
  toPem,
} from "../core/x509/index.ts";
import { isAlreadyExists, isNotFound, type KubeRest } from "../shells/kube/rest.ts";
import type { Logger } from "../shells/log.ts";
import { COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL, secretPath } from "./resources.ts";

/** A generated root lives long; leaves live minutes to hours. See docs/operations.md for rotation. */
export const GENERATED_CA_VALIDITY_MS = 365 * 24 * 3_600_000;

interface SecretData {
  data?: Record<string, string>;
  metadata?: { annotations?: Record<string, string> };
}

const b64 = (s: string) => Buffer.from(s, "utf8").toString("base64");
const unb64 = (s: string | undefined) =>
  s === undefined ? undefined : Buffer.from(s, "base64").toString("utf8");

export interface CaMaterial {
  readonly ca: CertificateAuthority;
  /**
   * Every root workloads must trust: the CA's own roots plus the Secret's
   * optional `bundle.crt` (extra trust anchors, e.g. the next or the previous
   * CA during a rotation), without duplicates.
   */
  readonly trustAnchorsDer: readonly Uint8Array[];
  readonly trustAnchorsPem: string;
}

function withAnchors(ca: CertificateAuthority, extraPem: string | undefined): CaMaterial {
  const all: Uint8Array[] = [];
  const extra = extraPem ? certificatesFromPem(extraPem, "bundle.crt") : [];
  for (const der of [...ca.bundleDer, ...extra]) {
    if (!all.some((d) => Buffer.compare(d, der) === 0)) all.push(der);
  }
  return { ca, trustAnchorsDer: all, trustAnchorsPem: all.map((d) => toPem("CERTIFICATE", d)).join("") };
}

export async function loadOrCreateCa(args: {
  rest: KubeRest;
  namespace: string;
  secretName: string;
  trustDomain: string;
  log: Logger;
  now?: () => Date;
}): Promise<CaMaterial> {
  const { rest, namespace, secretName, log } = args;
  const path = secretPath(namespace, secretName);
  for (let attempt = 0; attempt < 3; attempt++) {
    let secret: SecretData | undefined;
    try {
      secret = await rest.get<SecretData>(path);
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    if (secret) {
      const certPem = unb64(secret.data?.["tls.crt"]);
      const keyPem = unb64(secret.data?.["tls.key"]);
      if (!certPem || !keyPem) {
        throw new Error(
          `Secret ${namespace}/${secretName}: needs tls.crt and tls.key (PEM) for the Custody CA`,
        );
      }
      const chainPem = unb64(secret.data?.["ca.crt"]);
      const ca = loadCa({ certPem, keyPem, ...(chainPem ? { chainPem } : {}) });
      if (ca.trustDomain !== undefined && ca.trustDomain !== args.trustDomain) {
        throw new Error(
          `Secret ${namespace}/${secretName}: CA is for trust domain ${ca.trustDomain}, operator is configured for ${args.trustDomain}`,
        );
      }
      log.info("CA loaded", { object: `${namespace}/${secretName}`, notAfter: ca.notAfter.toISOString() });
      return withAnchors(ca, unb64(secret.data?.["bundle.crt"]));
    }
    const generated = generateCa({
      trustDomain: args.trustDomain,
      now: (args.now ?? (() => new Date()))(),
      validityMs: GENERATED_CA_VALIDITY_MS,
      serial: serialFromRandom(randomBytes(16)),
    });
    try {
      await rest.post(
        secretPath(namespace),
        {
          apiVersion: "v1",
          kind: "Secret",
          type: "kubernetes.io/tls",
          metadata: {
            name: secretName,
            namespace,
            labels: { [MANAGED_BY_LABEL]: MANAGED_BY, [COMPONENT_LABEL]: "ca" },
            annotations: { "custody.dev/ca-source": "generated" },
          },
          data: {
            "tls.crt": b64(generated.certPem),
            "tls.key": b64(generated.keyPem),
            "ca.crt": b64(generated.certPem),
          },
        },
        // The response echoes the CA's key: not read.
        { discardResponse: true },
      );
      log.info("CA generated", {
        object: `${namespace}/${secretName}`,
        notAfter: generated.ca.notAfter.toISOString(),
      });
      return withAnchors(generated.ca, undefined);
    } catch (err) {
      // Another replica created it first: load theirs.
      if (!isAlreadyExists(err)) throw err;
    }
  }
  throw new Error(`Secret ${namespace}/${secretName}: could not load or create the CA`);
}
