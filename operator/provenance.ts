// The operator's provenance recorder: appends lifecycle events to this
// writer's hash-chained stream and resolves only when Kafka has acknowledged
// the batch holding the record, sealed by a signature on its last event
// (acks=all, idempotent producer). Issuance awaits it, so no credential is
// written before its `issued` event is durable and covered by a signature.
import { createHash, type KeyObject, randomUUID } from "node:crypto";
import { Kafka, logLevel } from "kafkajs";
import { createStreamWriter, type StreamWriter } from "../core/provenance/chain.ts";
import type { EventData, EventType } from "../core/provenance/events.ts";
import { createEs256Signer } from "../core/provenance/sign.ts";
import { BatchingProducer } from "../shells/kafka/batching-producer.ts";
import type { Compression } from "../shells/kafka/codecs.ts";
import type { KafkaConnection } from "../shells/kafka/connection.ts";
import { readTail, type TailRecord } from "../shells/kafka/read-tail.ts";
import type { Logger } from "../shells/log.ts";

/**
 * The provenance stream cannot take an event now: this replica does not
 * lead, its writer is not open yet (Kafka unreachable since it took over),
 * or the last send failed. Nothing was appended; try again later.
 */
export class ProvenanceUnavailableError extends Error {
  override readonly name = "ProvenanceUnavailableError";
}

export interface ProvenanceRecorder {
  /** Appends one event; resolves once Kafka acknowledged it. */
  record<T extends EventType>(
    type: T,
    subject: string,
    data: EventData<T>,
    rootUid: string,
    /** A deterministic id for an event that may be recorded twice (e.g. after a crash): a repeat is a recognisable duplicate. */
    id?: string,
  ): Promise<void>;
  /** True while the last send succeeded (for the Issuing condition's message and readiness). */
  readonly healthy: boolean;
  readonly backlog: number;
  /** The last event Kafka acknowledged (what a checkpoint may anchor); undefined before the first. */
  readonly ackedHead?: AckedHead | undefined;
  /** Per partition, an offset at or before every record of this writer not yet covered by ackedHead. */
  resumeOffsets?(): Record<string, string>;
  /**
   * Holds resumeOffsets at or below where the next record will land until
   * the returned release is called (an issuance whose Secret is not written yet).
   */
  pin?(): () => void;
  /** Reads the topic from these offsets to its current end (a predecessor's tail). */
  readTail?(from: ReadonlyMap<number, string>): Promise<TailRecord[]>;
  close(): Promise<void>;
}

export interface AckedHead {
  readonly stream: string;
  readonly epoch: number;
  readonly seq: number;
  readonly hash: string;
}

/**
 * Records on a stream opened on demand, within a time budget: opening the
 * stream counts against it too (Kafka may be down). An answer that waits for
 * its event (token exchange, a decision) fails closed when this rejects.
 */
export async function recordWithin(
  open: () => Promise<Pick<ProvenanceRecorder, "record">>,
  timeoutMs: number,
  ...args: Parameters<ProvenanceRecorder["record"]>
): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      open().then((r) => r.record(...args)),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`not acknowledged within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
  } finally {
    if (timer) clearTimeout(timer);
  }
}

/** A UUID-shaped id derived from its parts (SHA-256), for events recorded at most once in meaning. */
export function deterministicEventId(...parts: string[]): string {
  const h = createHash("sha256").update(parts.join("\u0000"), "utf8").digest("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-5${h.slice(13, 16)}-${((Number.parseInt(h[16]!, 16) & 3) | 8).toString(16)}${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

/** Structured content mode: the record value is the whole event. */
export const CLOUDEVENTS_HEADERS = { "content-type": "application/cloudevents+json" } as const;

export interface KafkaRecorderOptions {
  brokers: string[];
  topic: string;
  partitions: number;
  replicationFactor: number;
  /** Names this writer's stream; one writer per stream. */
  writer: string;
  epoch: number;
  signingKey: KeyObject;
  log: Logger;
  /** TLS and SASL (shells/kafka/connection.ts). */
  connection?: KafkaConnection;
  /** Record-batch compression (shells/kafka/codecs.ts); zstd when absent. */
  compression?: Compression;
}

export async function createKafkaRecorder(opts: KafkaRecorderOptions): Promise<ProvenanceRecorder> {
  const kafka = new Kafka({
    clientId: `custody-operator-${opts.writer}`,
    brokers: opts.brokers,
    ...(opts.connection ?? {}),
    logLevel: logLevel.NOTHING,
    retry: { retries: 5, initialRetryTime: 100, maxRetryTime: 2000 },
  });
  const startOffsets = await ensureTopic(kafka, opts);
  const stream = `operator/${opts.writer}`;
  const signer = createEs256Signer(opts.signingKey);
  const writer: StreamWriter = createStreamWriter({ stream, epoch: opts.epoch, signer });
  const source = `custody.dev/operator/${opts.writer}`;
  let lastError = "";
  const producer = new BatchingProducer(kafka, {
    topic: opts.topic,
    ...(opts.compression ? { compression: opts.compression } : {}),
    onSendError: (err, attempt) => {
      const msg = err instanceof Error ? err.message : String(err);
      if (msg !== lastError || attempt % 20 === 1)
        opts.log.warn("provenance send failed; retrying", { attempt, error: msg });
      lastError = msg;
    },
  });
  let acked: AckedHead | undefined;
  const current = (): Record<string, string> => {
    const out: Record<string, string> = {};
    for (const [p, start] of startOffsets) out[String(p)] = producer.lastBatchOffsets.get(p) ?? start;
    return out;
  };
  const pins = new Set<Record<string, string>>();
  return {
    record(type, subject, data, rootUid, id) {
      // Appending is synchronous, so events enter the stream (and the
      // producer's queue) in one order: the chain order is the send order.
      const appended = writer.append({
        id: id ?? randomUUID(),
        source,
        type,
        subject,
        time: new Date().toISOString(),
        data,
      } as never);
      const { seq, hash } = appended;
      return producer
        .send({
          key: rootUid,
          // One signature per batch: the event closing it is sealed and covers the others.
          value: appended,
          headers: CLOUDEVENTS_HEADERS,
        })
        .then(() => {
          // Acknowledgements arrive in stream order; keep the highest.
          if (!acked || seq > acked.seq) acked = { stream, epoch: opts.epoch, seq, hash };
        });
    },
    get ackedHead() {
      return acked;
    },
    resumeOffsets() {
      // Every record this writer sends after now lies at or beyond these;
      // pinned snapshots hold them back while an issuance is undelivered.
      const out = current();
      for (const snapshot of pins)
        for (const [p, o] of Object.entries(snapshot)) if (BigInt(o) < BigInt(out[p] ?? o)) out[p] = o;
      return out;
    },
    pin() {
      const snapshot = current();
      pins.add(snapshot);
      return () => {
        pins.delete(snapshot);
      };
    },
    readTail: (from) => readTail(kafka, opts.topic, from),
    get healthy() {
      return !producer.failing;
    },
    get backlog() {
      return producer.backlog;
    },
    close: () => producer.stop(),
  };
}

/** Creates the topic when missing; returns each partition's high watermark (where this writer's records begin). */
async function ensureTopic(kafka: Kafka, opts: KafkaRecorderOptions): Promise<Map<number, string>> {
  const admin = kafka.admin();
  await admin.connect();
  try {
    const topics = await admin.listTopics();
    if (!topics.includes(opts.topic)) {
      await admin.createTopics({
        waitForLeaders: true,
        topics: [
          {
            topic: opts.topic,
            numPartitions: opts.partitions,
            replicationFactor: opts.replicationFactor,
            // Provenance is evidence: keep it (size- or time-bounded retention
            // is an operator decision documented in docs/operations.md).
            configEntries: [
              { name: "retention.ms", value: "-1" },
              { name: "cleanup.policy", value: "delete" },
              { name: "min.insync.replicas", value: String(Math.min(2, opts.replicationFactor)) },
            ],
          },
        ],
      });
      opts.log.info("provenance topic created", { topic: opts.topic, partitions: opts.partitions });
    }
    // Right after creation the partitions' leaders may not be known to every
    // broker yet ("not the leader for that topic-partition"): ask again.
    for (let attempt = 1; ; attempt++) {
      try {
        const offsets = await admin.fetchTopicOffsets(opts.topic);
        return new Map(offsets.map((p) => [p.partition, p.high]));
      } catch (err) {
        if (attempt >= 20) throw err;
        await new Promise((r) => setTimeout(r, Math.min(2000, 100 * attempt)));
      }
    }
  } finally {
    await admin.disconnect();
  }
}
