// Reads a topic from the beginning for assertions (a fresh consumer group
// per call), until `until` holds for the records seen or the time runs out.
import { randomUUID } from "node:crypto";
import { Kafka, logLevel } from "kafkajs";
import "../../shells/kafka/codecs.ts";

export interface TopicRecord {
  partition: number;
  offset: string;
  key: string;
  value: string;
}

export async function readTopic(
  brokers: string,
  topic: string,
  until: (records: TopicRecord[]) => boolean,
  timeoutMs = 20_000,
): Promise<TopicRecord[]> {
  const kafka = new Kafka({
    clientId: "custody-test-reader",
    brokers: brokers.split(","),
    logLevel: logLevel.NOTHING,
  });
  const consumer = kafka.consumer({ groupId: `test-${randomUUID()}` });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const records: TopicRecord[] = [];
  let done!: () => void;
  const finished = new Promise<void>((r) => {
    done = r;
  });
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      records.push({
        partition,
        offset: message.offset,
        key: message.key?.toString() ?? "",
        value: message.value?.toString() ?? "",
      });
      if (until(records)) done();
    },
  });
  const timer = setTimeout(done, timeoutMs);
  await finished;
  clearTimeout(timer);
  await consumer.disconnect();
  return records;
}
