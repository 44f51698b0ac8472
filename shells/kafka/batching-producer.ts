// Batches records from many concurrent callers into few acks=all sends while
// keeping submission order (and so per-key order), and resolves each caller's
// promise only when the broker has acknowledged its whole batch. A send that
// fails is retried with the same bytes at the head of the queue, never
// dropped and never overtaken, so while Kafka is down callers simply wait.
import kafkajs, { type Kafka, type Message, type Partitioners, type Producer } from "kafkajs";
import { type Compression, compressionType } from "./codecs.ts";

/**
 * A record value that is either sealed (signed) or not, decided when the
 * record first joins a batch: the last record of each batch is sealed, the
 * others are not (a provenance stream's seal covers the events before it).
 * Both calls must return the same bytes every time.
 */
export interface SealableValue {
  unsealed(): Buffer;
  sealed(): Buffer;
}

export interface ProducerRecord {
  readonly key: string;
  readonly value: Buffer | SealableValue;
  readonly headers?: Record<string, string>;
}

interface Pending {
  readonly key: string;
  readonly headers: Record<string, string> | undefined;
  /** The value until its bytes are fixed, then let go (what it holds, e.g. an appended event's, is garbage). */
  value: Buffer | SealableValue | undefined;
  /** The value as first sent: every retry sends these bytes. */
  bytes?: Buffer;
  readonly resolve: () => void;
  readonly reject: (err: Error) => void;
}

export interface BatchingProducerOptions {
  readonly topic: string;
  /** Most records in one produce request. */
  readonly maxBatch?: number;
  /**
   * Most bytes of keys and values in one produce request, before compression
   * (under the broker's message.max.bytes, 1 MiB by default, even when every
   * record goes to one partition and compression does nothing).
   */
  readonly maxBatchBytes?: number;
  /** Record-batch compression (shells/kafka/codecs.ts); zstd by default. */
  readonly compression?: Compression;
  /** Delay before retrying a failed batch; doubles up to maxBackoffMs. */
  readonly minBackoffMs?: number;
  readonly maxBackoffMs?: number;
  readonly onSendError?: (err: unknown, attempt: number) => void;
  readonly onAcked?: (count: number, latencyMs: number) => void;
}

export class BatchingProducer {
  readonly #producer: Producer;
  readonly #compression: number;
  readonly #opts: Required<Omit<BatchingProducerOptions, "onSendError" | "onAcked">> &
    Pick<BatchingProducerOptions, "onSendError" | "onAcked">;
  #queue: Pending[] = [];
  #head = 0;
  #sending = false;
  #stopped = false;
  #connected = false;
  #failures = 0;
  readonly #baseOffsets = new Map<number, string>();

  constructor(kafka: Kafka, opts: BatchingProducerOptions) {
    // kafkajs 2.2.4's idempotent producer is only correct with one request in
    // flight; acks=all is set per send.
    this.#producer = kafka.producer({
      idempotent: true,
      maxInFlightRequests: 1,
      allowAutoTopicCreation: false,
      createPartitioner: cachedPartitioner,
    });
    this.#opts = {
      maxBatch: 1000,
      maxBatchBytes: 900_000,
      compression: "zstd",
      minBackoffMs: 100,
      maxBackoffMs: 5000,
      ...opts,
    };
    this.#compression = compressionType(this.#opts.compression);
  }

  get connected(): boolean {
    return this.#connected;
  }

  /** Records waiting for an acknowledgement. */
  get backlog(): number {
    return this.#queue.length - this.#head;
  }

  /**
   * Per partition, the first offset of the last acknowledged batch: every
   * record sent after it (one request in flight, in order) lies at or beyond.
   */
  get lastBatchOffsets(): ReadonlyMap<number, string> {
    return this.#baseOffsets;
  }

  /** Last send failed and has not succeeded since. */
  get failing(): boolean {
    return this.#failures > 0;
  }

  send(record: ProducerRecord): Promise<void> {
    if (this.#stopped) return Promise.reject(new Error("producer stopped"));
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ key: record.key, headers: record.headers, value: record.value, resolve, reject });
      if (!this.#sending) queueMicrotask(() => void this.#pump());
    });
  }

  async #pump(): Promise<void> {
    if (this.#sending) return;
    this.#sending = true;
    try {
      while (!this.#stopped && this.backlog > 0) {
        let batch: Pending[] = [];
        const started = performance.now();
        try {
          // Sealing signs: a signer fault is a failed send (retried, callers
          // wait), not an unhandled rejection.
          batch = this.#nextBatch();
          if (!this.#connected) {
            await this.#producer.connect();
            this.#connected = true;
          }
          const messages: Message[] = batch.map((p) => ({
            key: p.key,
            value: p.bytes!,
            ...(p.headers ? { headers: p.headers } : {}),
          }));
          const acked = await this.#producer.send({
            topic: this.#opts.topic,
            acks: -1,
            compression: this.#compression,
            messages,
          });
          for (const r of acked)
            if (r.baseOffset !== undefined) this.#baseOffsets.set(r.partition, r.baseOffset);
        } catch (err) {
          this.#failures++;
          this.#opts.onSendError?.(err, this.#failures);
          const backoff = Math.min(
            this.#opts.maxBackoffMs,
            this.#opts.minBackoffMs * 2 ** Math.min(this.#failures - 1, 16),
          );
          await new Promise((r) => setTimeout(r, backoff));
          continue;
        }
        this.#failures = 0;
        // Acknowledged slots let go of their records (events, bytes) at once,
        // not when the queue is next compacted.
        for (let i = this.#head; i < this.#head + batch.length; i++) this.#queue[i] = ACKNOWLEDGED;
        this.#head += batch.length;
        if (this.#head > 4096 && this.#head * 2 > this.#queue.length) {
          this.#queue = this.#queue.slice(this.#head);
          this.#head = 0;
        }
        this.#opts.onAcked?.(batch.length, performance.now() - started);
        for (const p of batch) p.resolve();
      }
    } finally {
      this.#sending = false;
    }
  }

  /**
   * The records of the next send, their bytes fixed. A retry re-sends the
   * records of the failed send together (they ended with a sealed one) and
   * may add new ones, of which the last is sealed.
   */
  #nextBatch(): Pending[] {
    const queue = this.#queue;
    let end = this.#head;
    let bytes = 0;
    while (end < queue.length && queue[end]!.bytes !== undefined) bytes += sizeOf(queue[end++]!);
    const fixed = end;
    while (end < queue.length && end - this.#head < this.#opts.maxBatch) {
      const next = sizeOf(queue[end]!);
      if (end > this.#head && bytes + next > this.#opts.maxBatchBytes) break;
      bytes += next;
      end++;
    }
    for (let i = fixed; i < end; i++) {
      const p = queue[i]!;
      const value = p.value!;
      p.bytes = Buffer.isBuffer(value) ? value : i === end - 1 ? value.sealed() : value.unsealed();
      p.value = undefined;
    }
    return queue.slice(this.#head, end);
  }

  /** Waits for queued records to be acknowledged, then disconnects. */
  async stop({ drainTimeoutMs = 10_000 }: { drainTimeoutMs?: number } = {}): Promise<void> {
    const deadline = Date.now() + drainTimeoutMs;
    while (this.backlog > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    this.#stopped = true;
    const left = this.#queue.slice(this.#head);
    this.#queue = [];
    this.#head = 0;
    for (const p of left) p.reject(new Error("producer stopped before the record was acknowledged"));
    if (this.#connected) await this.#producer.disconnect();
    this.#connected = false;
  }
}

const ACKNOWLEDGED: Pending = Object.freeze({
  key: "",
  headers: undefined,
  value: undefined,
  bytes: Buffer.alloc(0),
  resolve: () => undefined,
  reject: () => undefined,
});

function sizeOf(p: Pending): number {
  const value = p.bytes ?? p.value!;
  // A sealed value is the unsealed one plus its signature member (~100 bytes): the bound leaves room.
  return p.key.length + (Buffer.isBuffer(value) ? value.length : value.unsealed().length);
}

/**
 * kafkajs's default partitioner (murmur2 of the key, as the Java client's),
 * remembered per key: otherwise it runs for every message, and a chain's
 * events share their root's key. Bounded: cleared when it reaches 10,000 keys.
 */
function cachedPartitioner(): ReturnType<typeof Partitioners.DefaultPartitioner> {
  const partition = kafkajs.Partitioners.DefaultPartitioner();
  const cache = new Map<string, number>();
  return (args) => {
    const key = `${args.partitionMetadata.length}/${String(args.message.key)}`;
    let p = cache.get(key);
    if (p === undefined) {
      p = partition(args);
      if (cache.size >= 10_000) cache.clear();
      cache.set(key, p);
    }
    return p;
  };
}
