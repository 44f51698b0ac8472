// Reads a topic from given offsets per partition up to the high watermark
// at the start of the read, then stops: a bounded tail, for a new leader
// settling what its predecessor left. kafkajs joins a consumer group for
// this (it cannot assign partitions directly); the group is unique per read
// and deleted afterwards.
import { randomUUID } from "node:crypto";
import type { Kafka } from "kafkajs";
// zstd batches (what the operator writes) need the codec registered.
import "./codecs.ts";

export interface TailRecord {
  partition: number;
  offset: string;
  value: Buffer;
}

export async function readTail(
  kafka: Kafka,
  topic: string,
  from: ReadonlyMap<number, string>,
  timeoutMs = 30_000,
): Promise<TailRecord[]> {
  const admin = kafka.admin();
  await admin.connect();
  const groupId = `custody-tail-${randomUUID()}`;
  try {
    const ends = new Map<number, bigint>();
    for (const p of await admin.fetchTopicOffsets(topic)) {
      const start = from.get(p.partition);
      if (start !== undefined && BigInt(p.high) > BigInt(start)) ends.set(p.partition, BigInt(p.high));
    }
    if (ends.size === 0) return [];
    const consumer = kafka.consumer({ groupId, allowAutoTopicCreation: false });
    const records: TailRecord[] = [];
    await consumer.connect();
    try {
      await consumer.subscribe({ topic, fromBeginning: true });
      const pending = new Set(ends.keys());
      let finish!: () => void;
      const done = new Promise<void>((r) => {
        finish = r;
      });
      // Seek once the group is joined (seeking earlier throws on a fresh
      // broker, where the first join takes a while): start where the tail starts.
      consumer.on(consumer.events.GROUP_JOIN, () => {
        for (const [partition] of ends) consumer.seek({ topic, partition, offset: from.get(partition)! });
      });
      await consumer.run({
        eachMessage: async ({ partition, message }) => {
          const end = ends.get(partition);
          if (end === undefined) return;
          const offset = BigInt(message.offset);
          if (offset < BigInt(from.get(partition)!)) return;
          if (offset < end && message.value)
            records.push({ partition, offset: message.offset, value: message.value });
          if (offset + 1n >= end) {
            pending.delete(partition);
            if (pending.size === 0) finish();
          }
        },
      });

      const timer = setTimeout(finish, timeoutMs);
      await done;
      clearTimeout(timer);
      if (pending.size > 0) throw new Error(`tail of ${topic} not read within ${timeoutMs} ms`);
    } finally {
      await consumer.disconnect();
    }
    return records;
  } finally {
    await admin.deleteGroups([groupId]).catch(() => undefined);
    await admin.disconnect();
  }
}
