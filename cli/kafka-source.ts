// Reads a provenance topic for the CLI: each partition from a given offset up
// to the high-water mark it had when the read started, then stops (records
// appended meanwhile are left for the next run).
//
// kafkajs cannot assign partitions directly: every consumer joins a group.
// Each read therefore uses a group of its own (unique id), seeks to its start
// offsets, never commits, and deletes the group afterwards, so runs leave
// nothing behind. (admin.setOffsets would seed the offsets before joining, but
// kafkajs implements it by running a consumer of its own that waits a full
// fetch: five seconds per run.)
import { randomUUID } from "node:crypto";
import { type Admin, Kafka, type KafkaMessage, logLevel } from "kafkajs";
// Registers zstd, the operator's default record-batch compression.
import "../shells/kafka/codecs.ts";
import { kafkaConnectionFromEnv } from "../shells/kafka/connection.ts";

export interface PartitionOffsets {
  readonly partition: number;
  /** Earliest offset still in the log (retention may have deleted the ones before). */
  readonly low: bigint;
  /** High-water mark: the offset the next record will get. */
  readonly high: bigint;
}

export interface SourceRecord {
  readonly partition: number;
  readonly offset: bigint;
  readonly key: Buffer | null;
  readonly value: Buffer | null;
  readonly headers: Readonly<Record<string, string>>;
}

/** Read partition `partition` from `from` (inclusive) to `to` (exclusive). */
export interface ReadRange {
  readonly partition: number;
  readonly from: bigint;
  readonly to: bigint;
}

/** What the index and `verify` read from: the Kafka topic, or an in-memory log in tests. */
export interface RecordSource {
  readonly topic: string;
  /** An id of the Kafka cluster, to notice an index being pointed at another cluster. */
  clusterId(): Promise<string>;
  offsets(): Promise<PartitionOffsets[]>;
  /**
   * Calls onBatch with records of one partition at a time, in offset order,
   * until every range is read. A throw from onBatch stops the read and rejects.
   */
  read(ranges: readonly ReadRange[], onBatch: (records: SourceRecord[]) => void): Promise<void>;
  close(): Promise<void>;
}

export class TopicNotFoundError extends Error {}

export interface KafkaSourceOptions {
  readonly brokers: readonly string[];
  readonly topic: string;
  /** Bounds how long an unreachable broker can hold the CLI (kafkajs retries on top). */
  readonly connectionTimeoutMs?: number;
  readonly retries?: number;
  /** Problems that do not fail the read (a consumer group left behind). */
  readonly onWarning?: (message: string) => void;
  /** A read with no progress for this long fails (default 60 s). */
  readonly stallTimeoutMs?: number;
}

export class KafkaTopicSource implements RecordSource {
  readonly topic: string;
  readonly #kafka: Kafka;
  readonly #warn: (message: string) => void;
  readonly #stallMs: number;
  #admin: Admin | undefined;

  constructor(opts: KafkaSourceOptions) {
    this.topic = opts.topic;
    this.#warn = opts.onWarning ?? (() => undefined);
    this.#stallMs = opts.stallTimeoutMs ?? 60_000;
    this.#kafka = new Kafka({
      clientId: "custody-cli",
      brokers: [...opts.brokers],
      // The same TLS/SASL settings as the operator's (CUSTODY_KAFKA_TLS, ...).
      ...kafkaConnectionFromEnv(),
      logLevel: logLevel.NOTHING,
      connectionTimeout: opts.connectionTimeoutMs ?? 3000,
      retry: { retries: opts.retries ?? 2, initialRetryTime: 200, maxRetryTime: 2000 },
    });
  }

  async #adminClient(): Promise<Admin> {
    if (this.#admin === undefined) {
      const admin = this.#kafka.admin();
      await admin.connect();
      this.#admin = admin;
    }
    return this.#admin;
  }

  async clusterId(): Promise<string> {
    return (await (await this.#adminClient()).describeCluster()).clusterId;
  }

  async offsets(): Promise<PartitionOffsets[]> {
    const admin = await this.#adminClient();
    // fetchTopicOffsets on a missing topic retries for a long while before it
    // fails; one metadata request answers at once.
    if (!(await admin.listTopics()).includes(this.topic)) {
      throw new TopicNotFoundError(`topic ${this.topic} does not exist`);
    }
    return (await admin.fetchTopicOffsets(this.topic))
      .map((p) => ({ partition: p.partition, low: BigInt(p.low), high: BigInt(p.high) }))
      .sort((a, b) => a.partition - b.partition);
  }

  async read(ranges: readonly ReadRange[], onBatch: (records: SourceRecord[]) => void): Promise<void> {
    const wanted = ranges.filter((r) => r.to > r.from);
    if (wanted.length === 0) return;
    const admin = await this.#adminClient();
    const groupId = `custody-cli-${randomUUID()}`;
    const consumer = this.#kafka.consumer({
      groupId,
      // Nothing to wait for: the read ends at the high-water marks seen at start.
      maxWaitTimeInMs: 100,
      // Everything up to the high-water mark, including records of transactions
      // still open: provenance is verified record by record, not by transaction.
      readUncommitted: true,
      allowAutoTopicCreation: false,
    });
    const ends = new Map(wanted.map((r) => [r.partition, r]));
    const pending = new Set(wanted.map((r) => r.partition));
    // Each offset is delivered once, in order, whatever kafkajs fetches.
    const next = new Map(wanted.map((r) => [r.partition, r.from]));
    let finish!: (err?: unknown) => void;
    let over = false;
    const finished = new Promise<void>((resolve, reject) => {
      finish = (err) => {
        over = true;
        if (err === undefined) resolve();
        else reject(err);
      };
    });
    // It may fail before it is awaited (a crash while joining): not an unhandled rejection.
    finished.catch(() => undefined);
    // A read that stops moving (a partition that never reaches its end,
    // a consumer that keeps rebalancing) fails instead of hanging the CLI.
    let progressed = Date.now();
    const stallMs = this.#stallMs;
    const watchdog = setInterval(() => {
      if (Date.now() - progressed < stallMs) return;
      const where = [...pending].map((p) => `partition ${p} at offset ${next.get(p)} of ${ends.get(p)!.to}`);
      finish(
        new Error(`reading ${this.topic} made no progress for ${stallMs / 1000} s: ${where.join(", ")}`),
      );
    }, 1000);
    const reached = (partition: number, lastOffset: bigint) => {
      progressed = Date.now();
      const range = ends.get(partition);
      if (range === undefined || !pending.has(partition) || lastOffset < range.to - 1n) return;
      pending.delete(partition);
      consumer.pause([{ topic: this.topic, partitions: [partition] }]);
      if (pending.size === 0) finish();
    };
    try {
      await consumer.connect();
      // Emitted for every batch, including those kafkajs filtered down to
      // nothing (control records): progress is read from here, not from data.
      consumer.on(consumer.events.END_BATCH_PROCESS, (e) =>
        reached(e.payload.partition, BigInt(e.payload.lastOffset)),
      );
      consumer.on(consumer.events.CRASH, (e) => finish(e.payload.error));
      await consumer.subscribe({ topic: this.topic, fromBeginning: true });
      const run = consumer.run({
        autoCommit: false,
        eachBatch: async ({ batch }) => {
          const range = ends.get(batch.partition);
          // After a failure nothing more is handed over: the caller stopped.
          if (over || range === undefined || !pending.has(batch.partition)) return;
          const records: SourceRecord[] = [];
          for (const m of batch.messages) {
            const offset = BigInt(m.offset);
            // Before the next expected offset: a fetch from before the seek, or
            // one the seek repeats. At or past the end: appended after the start.
            if (offset < next.get(batch.partition)! || offset >= range.to) continue;
            next.set(batch.partition, offset + 1n);
            records.push(toRecord(batch.partition, offset, m));
          }
          if (records.length === 0) return;
          try {
            onBatch(records);
          } catch (err) {
            finish(err);
          }
        },
      });
      // Seeks apply from the next fetch (records an earlier fetch brings are
      // filtered out above); partitions with nothing to read are never fetched.
      await run;
      const idle = (await this.offsets()).map((p) => p.partition).filter((p) => !ends.has(p));
      if (idle.length > 0) consumer.pause([{ topic: this.topic, partitions: idle }]);
      for (const r of wanted)
        consumer.seek({ topic: this.topic, partition: r.partition, offset: r.from.toString() });
      await finished;
    } finally {
      clearInterval(watchdog);
      await consumer.disconnect().catch(() => undefined);
      await deleteGroup(admin, groupId, this.#warn);
    }
  }

  async close(): Promise<void> {
    await this.#admin?.disconnect();
    this.#admin = undefined;
  }
}

function toRecord(partition: number, offset: bigint, m: KafkaMessage): SourceRecord {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(m.headers ?? {})) {
    if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(",") : value.toString();
  }
  return { partition, offset, key: m.key ?? null, value: m.value ?? null, headers };
}

// The group is empty once the consumer has left; the broker may take a moment to see it.
async function deleteGroup(admin: Admin, groupId: string, warn: (message: string) => void): Promise<void> {
  let last: unknown;
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      await admin.deleteGroups([groupId]);
      return;
    } catch (err) {
      const type = (err as { groups?: Array<{ error?: { type?: string } }> }).groups?.[0]?.error?.type;
      if (type === "GROUP_ID_NOT_FOUND") return;
      last = err;
      await new Promise((r) => setTimeout(r, 100 * (attempt + 1)));
    }
  }
  warn(`could not delete consumer group ${groupId}: ${last instanceof Error ? last.message : String(last)}`);
}

/** Brokers from --brokers or CUSTODY_KAFKA_BROKERS (host:port, comma-separated). */
export function parseBrokers(value: string): string[] {
  const brokers = value
    .split(",")
    .map((b) => b.trim())
    .filter((b) => b.length > 0);
  for (const b of brokers) {
    if (!/^[^\s:]+:\d{1,5}$/.test(b) && !/^\[[0-9a-fA-F:]+\]:\d{1,5}$/.test(b)) {
      throw new Error(`must be host:port[,host:port], got ${JSON.stringify(b)}`);
    }
  }
  if (brokers.length === 0) throw new Error("must name at least one broker (host:port)");
  return brokers;
}
