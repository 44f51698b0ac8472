// The batching producer over a fake kafkajs producer (pure unit test: the
// real broker is exercised by the integration tests): which records are
// sealed, what a retry re-sends, how batches are bounded, what is compressed.
import kafkajs, { type Kafka, type ProducerRecord as KafkaSend, type RecordMetadata } from "kafkajs";
import { describe, expect, it } from "vitest";
import { BatchingProducer, type SealableValue } from "../../shells/kafka/batching-producer.ts";
import { compressionFromEnv } from "../../shells/kafka/codecs.ts";

const { CompressionTypes, CompressionCodecs, Partitioners } = kafkajs;

/** A value that says which form was taken; each form is made once (like an appended event). */
function sealable(name: string, size = 10): SealableValue & { taken: string[] } {
  const taken: string[] = [];
  let unsealed: Buffer | undefined;
  let sealed: Buffer | undefined;
  return {
    taken,
    unsealed() {
      if (unsealed === undefined) {
        taken.push("unsealed");
        unsealed = Buffer.from(`${name}:${"u".repeat(size)}`);
      }
      return unsealed;
    },
    sealed() {
      if (sealed === undefined) {
        taken.push("sealed");
        sealed = Buffer.from(`${name}:${"u".repeat(size)}:sig`);
      }
      return sealed;
    },
  };
}

interface Sent {
  readonly values: Buffer[];
  readonly compression: number | undefined;
}

/** A fake Kafka whose producer fails the first `failures` sends and holds each send until released. */
function fakeKafka(failures = 0) {
  const sends: Sent[] = [];
  const waiting: Array<() => void> = [];
  let partitioner: ((args: never) => number) | undefined;
  const kafka = {
    producer: (config: { createPartitioner?: () => (args: never) => number }) => {
      partitioner = config.createPartitioner?.();
      return {
        connect: async () => undefined,
        disconnect: async () => undefined,
        send: (req: KafkaSend): Promise<RecordMetadata[]> => {
          sends.push({
            values: req.messages.map((m) => m.value as Buffer),
            compression: req.compression,
          });
          return new Promise((resolve, reject) =>
            waiting.push(() =>
              failures-- > 0
                ? reject(new Error("broker not available"))
                : resolve([{ topicName: "t", partition: 0, errorCode: 0, baseOffset: "0" }]),
            ),
          );
        },
      };
    },
  } as unknown as Kafka;
  const release = async () => {
    while (waiting.length === 0) await new Promise((r) => setTimeout(r, 1));
    waiting.shift()!();
    await new Promise((r) => setTimeout(r, 1));
  };
  return { kafka, sends, release, partitioner: () => partitioner };
}

const text = (b: Buffer) => b.toString("utf8");

describe("BatchingProducer", () => {
  it("seals the last record of each send and no other; callers resolve with their send", async () => {
    const { kafka, sends, release } = fakeKafka();
    const producer = new BatchingProducer(kafka, { topic: "t", minBackoffMs: 1 });
    const a = sealable("a");
    const acked: string[] = [];
    const first = producer.send({ key: "k", value: a }).then(() => acked.push("a"));
    await new Promise((r) => setTimeout(r, 1));
    // b, c, d queue up behind the send in flight and go together next.
    const rest = ["b", "c", "d"].map((n) => {
      const v = sealable(n);
      return { v, done: producer.send({ key: "k", value: v }).then(() => acked.push(n)) };
    });
    expect(acked).toEqual([]);
    await release();
    await first;
    expect(acked).toEqual(["a"]);
    await release();
    await Promise.all(rest.map((r) => r.done));
    expect(sends.map((s) => s.values.map(text))).toEqual([
      ["a:uuuuuuuuuu:sig"],
      ["b:uuuuuuuuuu", "c:uuuuuuuuuu", "d:uuuuuuuuuu:sig"],
    ]);
    expect(rest.map((r) => r.v.taken)).toEqual([["unsealed"], ["unsealed"], ["unsealed", "sealed"]]);
    await producer.stop();
  });

  it("re-sends the very bytes of a failed send, adding what arrived meanwhile with a new seal", async () => {
    const { kafka, sends, release } = fakeKafka(1);
    const producer = new BatchingProducer(kafka, { topic: "t", minBackoffMs: 1, onSendError: () => {} });
    const a = sealable("a");
    const b = sealable("b");
    const done = [producer.send({ key: "k", value: a }), producer.send({ key: "k", value: b })];
    await new Promise((r) => setTimeout(r, 1));
    const c = sealable("c");
    done.push(producer.send({ key: "k", value: c }));
    await release(); // the first send fails
    await release(); // the retry succeeds
    await Promise.all(done);
    expect(sends).toHaveLength(2);
    // b was sealed in the failed send and stays sealed (same bytes): the retry adds c, sealed.
    expect(sends[1]!.values.slice(0, 2)).toEqual(sends[0]!.values);
    expect(sends[1]!.values[0]).toBe(sends[0]!.values[0]);
    expect(sends[1]!.values.map(text)).toEqual(["a:uuuuuuuuuu", "b:uuuuuuuuuu:sig", "c:uuuuuuuuuu:sig"]);
    expect([a.taken, b.taken, c.taken]).toEqual([
      ["unsealed"],
      ["unsealed", "sealed"],
      ["unsealed", "sealed"],
    ]);
    await producer.stop();
  });

  it("treats a signer fault as a failed send: retried, the caller waits, no unhandled rejection", async () => {
    const { kafka, sends, release } = fakeKafka();
    const errors: unknown[] = [];
    const producer = new BatchingProducer(kafka, {
      topic: "t",
      minBackoffMs: 1,
      onSendError: (err) => void errors.push(err),
    });
    const a = sealable("a");
    let faults = 1;
    const flaky: SealableValue = {
      unsealed: () => a.unsealed(),
      sealed: () => {
        if (faults-- > 0) throw new Error("signer unavailable");
        return a.sealed();
      },
    };
    const done = producer.send({ key: "k", value: flaky });
    await release();
    await done;
    expect(errors.map(String)).toEqual(["Error: signer unavailable"]);
    expect(sends.map((s) => s.values.map(text))).toEqual([["a:uuuuuuuuuu:sig"]]);
    await producer.stop();
  });

  it("bounds a send by bytes, and still sends a record larger than the bound on its own", async () => {
    const { kafka, sends, release } = fakeKafka();
    const producer = new BatchingProducer(kafka, { topic: "t", maxBatchBytes: 100, minBackoffMs: 1 });
    const values = [sealable("a", 40), sealable("b", 40), sealable("c", 40), sealable("d", 500)];
    const done = values.map((v) => producer.send({ key: "k", value: v }));
    for (let i = 0; i < 3; i++) await release();
    await Promise.all(done);
    expect(sends.map((s) => s.values.map((v) => text(v).slice(0, 1)))).toEqual([["a", "b"], ["c"], ["d"]]);
    // Every send ends sealed.
    for (const s of sends) expect(text(s.values[s.values.length - 1]!)).toMatch(/:sig$/);
    await producer.stop();
  });

  it("compresses with zstd unless told otherwise, and plain buffers go as they are", async () => {
    const zstd = fakeKafka();
    const p1 = new BatchingProducer(zstd.kafka, { topic: "t" });
    const sent = p1.send({ key: "k", value: Buffer.from("plain") });
    await zstd.release();
    await sent;
    expect(zstd.sends[0]).toEqual({ values: [Buffer.from("plain")], compression: CompressionTypes.ZSTD });
    await p1.stop();
    const none = fakeKafka();
    const p2 = new BatchingProducer(none.kafka, { topic: "t", compression: "none" });
    const sent2 = p2.send({ key: "k", value: Buffer.from("plain") });
    await none.release();
    await sent2;
    expect(none.sends[0]!.compression).toBe(CompressionTypes.None);
    await p2.stop();
  });

  it("partitions as kafkajs's default partitioner does, remembering each key", () => {
    const { kafka, partitioner } = fakeKafka();
    new BatchingProducer(kafka, { topic: "t" });
    const cached = partitioner()!;
    const reference = Partitioners.DefaultPartitioner();
    for (const n of [1, 6, 13]) {
      const partitionMetadata = Array.from({ length: n }, (_, i) => ({
        partitionId: i,
        leader: 0,
        partitionErrorCode: 0,
        replicas: [0],
        isr: [0],
      }));
      for (let i = 0; i < 200; i++) {
        const args = { topic: "t", partitionMetadata, message: { key: `root-${i}-${n}`, value: null } };
        const expected = reference(args);
        expect(cached(args as never)).toBe(expected);
        expect(cached(args as never)).toBe(expected);
      }
    }
  });
});

describe("zstd codec", () => {
  it("is registered in kafkajs and round-trips a batch", async () => {
    type Codec = { compress(e: { buffer: Buffer }): Promise<Buffer>; decompress(b: Buffer): Promise<Buffer> };
    const codec = (CompressionCodecs as Record<number, () => Codec>)[CompressionTypes.ZSTD]!();
    const input = Buffer.from(JSON.stringify(Array.from({ length: 200 }, (_, i) => ({ i, s: "custody" }))));
    const compressed = await codec.compress({ buffer: input });
    expect(compressed.length).toBeLessThan(input.length / 4);
    expect((await codec.decompress(compressed)).equals(input)).toBe(true);
  });

  it("is chosen by CUSTODY_KAFKA_COMPRESSION, naming the variable on a bad value", () => {
    expect(compressionFromEnv({})).toBe("zstd");
    expect(compressionFromEnv({ CUSTODY_KAFKA_COMPRESSION: "none" })).toBe("none");
    expect(() => compressionFromEnv({ CUSTODY_KAFKA_COMPRESSION: "lz4" })).toThrow(
      /CUSTODY_KAFKA_COMPRESSION: must be one of zstd, gzip, none \(got "lz4"\)/,
    );
  });
});
