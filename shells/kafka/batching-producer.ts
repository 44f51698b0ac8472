// Batches records from many concurrent callers into few acks=all sends while
// keeping submission order (and so per-key order), and resolves each caller's
// promise only when the broker has acknowledged its record. A send that fails
// is retried with the same bytes at the head of the queue, never dropped and
// never overtaken, so while Kafka is down callers simply wait.
import type { Kafka, Message, Producer } from "kafkajs";

export interface ProducerRecord {
  readonly key: string;
  readonly value: Buffer;
  readonly headers?: Record<string, string>;
}

interface Pending {
  readonly record: ProducerRecord;
  readonly resolve: () => void;
  readonly reject: (err: Error) => void;
}

export interface BatchingProducerOptions {
  readonly topic: string;
  /** Most records in one produce request. */
  readonly maxBatch?: number;
  /** Delay before retrying a failed batch; doubles up to maxBackoffMs. */
  readonly minBackoffMs?: number;
  readonly maxBackoffMs?: number;
  readonly onSendError?: (err: unknown, attempt: number) => void;
  readonly onAcked?: (count: number, latencyMs: number) => void;
}

export class BatchingProducer {
  readonly #producer: Producer;
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
    });
    this.#opts = { maxBatch: 1000, minBackoffMs: 100, maxBackoffMs: 5000, ...opts };
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
      this.#queue.push({ record, resolve, reject });
      if (!this.#sending) queueMicrotask(() => void this.#pump());
    });
  }

  async #pump(): Promise<void> {
    if (this.#sending) return;
    this.#sending = true;
    try {
      while (!this.#stopped && this.backlog > 0) {
        const batch = this.#queue.slice(this.#head, this.#head + this.#opts.maxBatch);
        const started = performance.now();
        try {
          if (!this.#connected) {
            await this.#producer.connect();
            this.#connected = true;
          }
          const messages: Message[] = batch.map((p) => ({
            key: p.record.key,
            value: p.record.value,
            ...(p.record.headers ? { headers: p.record.headers } : {}),
          }));
          const acked = await this.#producer.send({ topic: this.#opts.topic, acks: -1, messages });
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
