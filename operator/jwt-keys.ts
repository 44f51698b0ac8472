// The JWT signing keys (JWT-SVIDs and on-behalf-of tokens), kept apart from
// the X.509 CA key, in one Secret of the operator's namespace that only
// Custody's service account may read. The leader rotates them on the
// schedule of core/jwt/keys.ts; every replica reloads the Secret so that
// its JWKS and its token endpoint agree with the leader's. Which key signs
// follows from the dates in the ring, so replicas need no signal to switch.
import { generateKeyPairSync } from "node:crypto";
import {
  type JwtAlgorithm,
  type JwtKey,
  jwtKeyId,
  type KeyRingState,
  type KeySchedule,
  parseRing,
  planRotation,
  publishedKeys,
  serializeRing,
  signingKey,
} from "../core/jwt/keys.ts";
import { isAlreadyExists, isConflict, isNotFound, type KubeRest } from "../shells/kube/rest.ts";
import type { Logger } from "../shells/log.ts";
import { COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL, secretPath } from "./resources.ts";

export const JWT_KEYS_SECRET = "custody-jwt-signing-keys";
const KEYS_FIELD = "keys.json";

interface KeysSecret {
  metadata?: { resourceVersion?: string };
  data?: Record<string, string>;
}

export function generateJwtKey(alg: JwtAlgorithm, createdAt: number, activateAt: number): JwtKey {
  const { privateKey, publicKey } =
    alg === "ES256"
      ? generateKeyPairSync("ec", { namedCurve: "P-256" })
      : alg === "ES384"
        ? generateKeyPairSync("ec", { namedCurve: "P-384" })
        : generateKeyPairSync("rsa", { modulusLength: 3072 });
  return { kid: jwtKeyId(publicKey), alg, privateKey, publicKey, createdAt, activateAt };
}

export interface JwtKeyManagerOptions {
  rest: KubeRest;
  namespace: string;
  alg: JwtAlgorithm;
  schedule: KeySchedule;
  log: Logger;
  now?: () => number;
  /** Called after the ring changed (loaded, rotated): republish JWKS and bundles. */
  onChange?: (ring: KeyRingState) => void;
}

export class JwtKeyManager {
  readonly #o: JwtKeyManagerOptions;
  readonly #now: () => number;
  #ring: KeyRingState = [];
  #rv: string | undefined;
  #digest = "";

  constructor(opts: JwtKeyManagerOptions) {
    this.#o = opts;
    this.#now = opts.now ?? Date.now;
  }

  get ring(): KeyRingState {
    return this.#ring;
  }

  /** The key that signs now; undefined only before the first load. */
  signing(now = this.#now()): JwtKey | undefined {
    return signingKey(this.#ring, now);
  }

  published(now = this.#now()): JwtKey[] {
    return publishedKeys(this.#ring, now, this.#o.schedule);
  }

  /** Reads the Secret (every replica, periodically); creates it with a first key when absent. */
  async load(): Promise<void> {
    const path = secretPath(this.#o.namespace, JWT_KEYS_SECRET);
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const s = await this.#o.rest.get<KeysSecret>(path);
        const text = s.data?.[KEYS_FIELD];
        if (!text) throw new Error(`Secret ${this.#o.namespace}/${JWT_KEYS_SECRET}: missing ${KEYS_FIELD}`);
        this.#set(parseRing(Buffer.from(text, "base64").toString("utf8")), s.metadata?.resourceVersion);
        return;
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
      const now = this.#now();
      const { ring } = planRotation([], now, this.#o.schedule, (c, a) => generateJwtKey(this.#o.alg, c, a));
      try {
        const created = await this.#o.rest.post<KeysSecret>(secretPath(this.#o.namespace), this.#body(ring));
        this.#set(ring, created.metadata?.resourceVersion);
        this.#o.log.info("JWT signing key created", { kid: ring[0]?.kid, alg: this.#o.alg });
        return;
      } catch (err) {
        if (!isAlreadyExists(err)) throw err;
      }
    }
    throw new Error(`Secret ${this.#o.namespace}/${JWT_KEYS_SECRET}: could not load or create`);
  }

  /**
   * The leader's step: applies the rotation plan for now and writes it with
   * the resourceVersion read (a conflict means another writer moved first:
   * reload and plan again next time).
   */
  async rotate(): Promise<string[]> {
    const now = this.#now();
    const plan = planRotation(this.#ring, now, this.#o.schedule, (c, a) => generateJwtKey(this.#o.alg, c, a));
    if (plan.changes.length === 0) return [];
    try {
      const next = this.#body(plan.ring);
      const body = { ...next, metadata: { ...next.metadata, resourceVersion: this.#rv } };
      const written = await this.#o.rest.put<KeysSecret>(
        secretPath(this.#o.namespace, JWT_KEYS_SECRET),
        body,
      );
      this.#set(plan.ring, written.metadata?.resourceVersion);
      for (const c of plan.changes) this.#o.log.info("JWT signing keys rotated", { change: c });
      return plan.changes;
    } catch (err) {
      if (!isConflict(err) && !isNotFound(err)) throw err;
      await this.load();
      return [];
    }
  }

  #set(ring: KeyRingState, rv: string | undefined): void {
    this.#ring = ring;
    this.#rv = rv;
    const digest = ring.map((k) => `${k.kid}/${k.activateAt}`).join(",");
    if (digest !== this.#digest) {
      this.#digest = digest;
      this.#o.onChange?.(ring);
    }
  }

  #body(ring: KeyRingState) {
    return {
      apiVersion: "v1",
      kind: "Secret",
      metadata: {
        name: JWT_KEYS_SECRET,
        namespace: this.#o.namespace,
        labels: { [MANAGED_BY_LABEL]: MANAGED_BY, [COMPONENT_LABEL]: "jwt-keys" },
      },
      data: { [KEYS_FIELD]: Buffer.from(serializeRing(ring)).toString("base64") },
    };
  }
}
