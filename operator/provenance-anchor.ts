// Outside Kafka, in the operator's namespace: the provenance public keys
// (so that `custody verify` needs no private key) and signed checkpoints of
// each stream's acknowledged head (so that a rewritten or truncated topic
// tail is detected: verify requires the stream to reach the last checkpoint).
// One ConfigMap, `custody-provenance`; checkpoints are few small writes (at
// most one per interval, only when the head moved).
import { createPublicKey, type JsonWebKey, type KeyObject } from "node:crypto";
import { CHECKPOINT_PREFIX, JWKS_KEY, PROVENANCE_CONFIGMAP } from "../core/names.ts";
import { type Checkpoint, makeCheckpoint } from "../core/provenance/checkpoint.ts";
import { jwkThumbprint, type Signer } from "../core/provenance/sign.ts";
import { isAlreadyExists, isNotFound, type KubeRest } from "../shells/kube/rest.ts";
import type { Logger } from "../shells/log.ts";
import type { AckedHead } from "./provenance.ts";
import { COMPONENT_LABEL, configMapPath, MANAGED_BY, MANAGED_BY_LABEL } from "./resources.ts";

/** Per stream: where in each partition its records not yet covered by its checkpoint begin. */
export const OFFSETS_PREFIX = "offsets.";
/** Per stream: its tail was settled by a successor (abandoned issuances recorded). */
export const SETTLED_PREFIX = "settled.";

export interface StreamOffsets {
  stream: string;
  /** partition → offset */
  partitions: Record<string, string>;
  time: string;
}

/** ConfigMap keys allow [-._a-zA-Z0-9]: a stream `operator/<id>` becomes `checkpoint.operator.<id>`. */
export function checkpointKey(stream: string): string {
  return `${CHECKPOINT_PREFIX}${safe(stream)}`;
}

const safe = (stream: string) => stream.replace(/[^-._a-zA-Z0-9]/g, ".");

interface ConfigMap {
  metadata?: { resourceVersion?: string };
  data?: Record<string, string>;
}

export class ProvenanceAnchor {
  readonly #rest: KubeRest;
  readonly #namespace: string;
  readonly #signer: Signer;
  readonly #log: Logger;
  #anchoredSeq = new Map<string, number>();

  constructor(rest: KubeRest, namespace: string, signer: Signer, log: Logger) {
    this.#rest = rest;
    this.#namespace = namespace;
    this.#signer = signer;
    this.#log = log;
  }

  /** Adds this key's public JWK to jwks.json (keys of earlier writers stay: old events keep verifying). */
  async publishKey(key: KeyObject): Promise<void> {
    const publicKey = key.type === "private" ? createPublicKey(key) : key;
    const jwk = publicKey.export({ format: "jwk" }) as Record<string, string>;
    const kid = jwkThumbprint(publicKey);
    const entry = { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y, kid, alg: "ES256", use: "sig" };
    const current = await this.#get();
    const keys = parseJwks(current?.data?.[JWKS_KEY]);
    if (keys.some((k) => k.kid === kid)) return;
    await this.#write({ [JWKS_KEY]: `${JSON.stringify({ keys: [...keys, entry] }, null, 2)}\n` });
    this.#log.info("provenance key published", { configMap: PROVENANCE_CONFIGMAP, kid });
  }

  /** Where a new writer's records begin, before its first event: a crash at any point leaves a bound. */
  async start(stream: string, partitions: Record<string, string>, now = new Date()): Promise<void> {
    const offsets: StreamOffsets = { stream, partitions, time: now.toISOString() };
    await this.#write({ [`${OFFSETS_PREFIX}${safe(stream)}`]: JSON.stringify(offsets) });
  }

  /** The published public keys by kid (jwks.json), for checking a predecessor's events. */
  async publishedKeys(): Promise<Map<string, JsonWebKey>> {
    const keys = parseJwks((await this.#get())?.data?.[JWKS_KEY]);
    return new Map(keys.filter((k) => typeof k.kid === "string").map((k) => [k.kid!, k as JsonWebKey]));
  }

  /** Streams of earlier writers whose tails no successor has settled yet. */
  async unsettled(self: string): Promise<StreamOffsets[]> {
    const data = (await this.#get())?.data ?? {};
    const out: StreamOffsets[] = [];
    for (const [key, text] of Object.entries(data)) {
      if (!key.startsWith(OFFSETS_PREFIX)) continue;
      try {
        const o = JSON.parse(text) as StreamOffsets;
        if (o.stream !== self && data[`${SETTLED_PREFIX}${safe(o.stream)}`] === undefined) out.push(o);
      } catch {
        // not ours to interpret
      }
    }
    return out;
  }

  /**
   * A successor settled these streams: their offsets entries go (a merge
   * patch with null removes a key), so the ConfigMap grows by one checkpoint
   * per writer, not by bookkeeping; the settled mark records who and when.
   */
  async markSettled(streams: readonly string[], by: string, now = new Date()): Promise<void> {
    if (streams.length === 0) return;
    const data: Record<string, string | null> = {};
    for (const s of streams) {
      data[`${SETTLED_PREFIX}${safe(s)}`] = JSON.stringify({ by, time: now.toISOString() });
      data[`${OFFSETS_PREFIX}${safe(s)}`] = null;
    }
    await this.#write(data);
  }

  /** Signs and stores a checkpoint of the head when it moved since the last one. */
  async anchor(
    head: AckedHead | undefined,
    offsets?: Record<string, string>,
    now = new Date(),
  ): Promise<Checkpoint | undefined> {
    if (!head || (this.#anchoredSeq.get(head.stream) ?? 0) >= head.seq) return undefined;
    const checkpoint = makeCheckpoint({
      stream: head.stream,
      seq: head.seq,
      hash: head.hash,
      epoch: head.epoch,
      time: now.toISOString(),
      signer: this.#signer,
    });
    await this.#write({
      [checkpointKey(head.stream)]: JSON.stringify(checkpoint),
      ...(offsets
        ? {
            [`${OFFSETS_PREFIX}${safe(head.stream)}`]: JSON.stringify({
              stream: head.stream,
              partitions: offsets,
              time: now.toISOString(),
            } satisfies StreamOffsets),
          }
        : {}),
    });
    this.#anchoredSeq.set(head.stream, head.seq);
    return checkpoint;
  }

  async #get(): Promise<ConfigMap | undefined> {
    try {
      return await this.#rest.get<ConfigMap>(configMapPath(this.#namespace, PROVENANCE_CONFIGMAP));
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  /**
   * A merge patch of our keys only (other streams' entries stay as they
   * are), creating the ConfigMap the first time: no read before a write.
   */
  async #write(data: Record<string, string | null>): Promise<void> {
    const path = configMapPath(this.#namespace, PROVENANCE_CONFIGMAP);
    try {
      await this.#rest.patch(path, { data }, "merge");
      return;
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    const created = Object.fromEntries(Object.entries(data).filter(([, v]) => v !== null));
    try {
      await this.#rest.post(configMapPath(this.#namespace), {
        apiVersion: "v1",
        kind: "ConfigMap",
        metadata: {
          name: PROVENANCE_CONFIGMAP,
          namespace: this.#namespace,
          labels: { [MANAGED_BY_LABEL]: MANAGED_BY, [COMPONENT_LABEL]: "provenance" },
        },
        data: created,
      });
    } catch (err) {
      // Created meanwhile (another replica): merge into it.
      if (!isAlreadyExists(err)) throw err;
      await this.#rest.patch(path, { data }, "merge");
    }
  }
}

function parseJwks(text: string | undefined): Array<Record<string, string>> {
  if (!text) return [];
  try {
    const parsed = JSON.parse(text) as { keys?: unknown };
    return Array.isArray(parsed.keys) ? (parsed.keys as Array<Record<string, string>>) : [];
  } catch {
    return [];
  }
}
