// kafkajs's Encoder with Custody's faster methods (shells/kafka/encoder.ts)
// writes the bytes the Kafka protocol defines: zigzag LEB128 varints checked
// against a BigInt reference, and records kafkajs's own decoders read back.
import { createRequire } from "node:module";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { kafkajsEncoderPatched, originalEncoderMethods } from "../../shells/kafka/encoder.ts";

const require = createRequire(import.meta.url);
type Enc = {
  buffer: Buffer;
  writeVarInt(v: number): Enc;
  writeVarLong(v: unknown): Enc;
  writeInt32(v: number): Enc;
  writeVarIntBytes(v: Buffer | string): Enc;
};
const Encoder = require("kafkajs/src/protocol/encoder") as new (size?: number) => Enc;
const Decoder = require("kafkajs/src/protocol/decoder") as new (
  b: Buffer,
) => {
  readVarInt(): number;
  readVarLong(): { toString(): string };
  readInt32(): number;
  readVarIntBytes(): Buffer;
};
const Record = require("kafkajs/src/protocol/recordBatch/record/v0") as (r: {
  offsetDelta?: number;
  timestampDelta?: number;
  key: string;
  value: Buffer;
  headers?: Record<string, string>;
}) => { buffer: Buffer };
const decodeRecord = require("kafkajs/src/protocol/recordBatch/record/v0/decoder") as (
  d: unknown,
  ctx: Record<string, unknown>,
) => {
  key: Buffer;
  value: Buffer;
  offset: string;
  timestamp: string;
  headers: Record<string, Buffer>;
};
const Long = require("kafkajs/src/utils/long") as { fromString(s: string): unknown };
const EncoderStatics = Encoder as unknown as { nextPowerOfTwo(v: number): number; prototype: object };
const ProduceV3 = require("kafkajs/src/protocol/requests/produce/v3/request") as (r: {
  acks: number;
  timeout: number;
  topicData: unknown[];
}) => { encode(): Promise<{ buffer: Buffer }> };

/** Runs `encode` with kafkajs's own Encoder methods back in place, then puts Custody's back. */
async function withOriginalMethods<T>(encode: () => Promise<T>): Promise<T> {
  const proto = EncoderStatics.prototype as Record<string, unknown>;
  const original = originalEncoderMethods!;
  const replaced = {
    ensureAvailable: proto.ensureAvailable,
    writeUVarInt: proto.writeUVarInt,
    writeVarLong: proto.writeVarLong,
    nextPowerOfTwo: EncoderStatics.nextPowerOfTwo,
  };
  Object.assign(proto, {
    ensureAvailable: original.ensureAvailable,
    writeUVarInt: original.writeUVarInt,
    writeVarLong: original.writeVarLong,
  });
  EncoderStatics.nextPowerOfTwo = original.nextPowerOfTwo;
  try {
    return await encode();
  } finally {
    Object.assign(proto, {
      ensureAvailable: replaced.ensureAvailable,
      writeUVarInt: replaced.writeUVarInt,
      writeVarLong: replaced.writeVarLong,
    });
    EncoderStatics.nextPowerOfTwo = replaced.nextPowerOfTwo;
  }
}

/** Fills what is left of Node's current buffer pool with a marker, so bytes an encoder failed to write would show. */
function dirtyThePool(): void {
  // Everything from this 1-byte slice to the pool's end is free: the next allocations come from there.
  const probe = Buffer.allocUnsafe(1);
  new Uint8Array(probe.buffer, probe.byteOffset, probe.buffer.byteLength - probe.byteOffset).fill(0xaa);
}

/** Zigzag LEB128 of a signed integer of the given width, per the Kafka protocol (and protobuf). */
function reference(value: bigint, bits: 32n | 64n): Buffer {
  let v = BigInt.asUintN(Number(bits), (value << 1n) ^ (value >> (bits - 1n)));
  const out: number[] = [];
  while (v >= 0x80n) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
  return Buffer.from(out);
}

const int32 = fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 });

describe("kafkajs Encoder, Custody's faster methods", () => {
  it("are installed, and an encoder takes no buffer before its first write", () => {
    expect(kafkajsEncoderPatched).toBe(true);
    const enc = new Encoder() as Enc & { buf: Buffer };
    expect(enc.buf.length).toBe(0);
    expect(enc.writeInt32(7).buffer).toEqual(Buffer.from([0, 0, 0, 7]));
    expect(enc.buf.length).toBe(512);
  });

  it("writes varints as zigzag LEB128 and kafkajs reads them back", () => {
    fc.assert(
      fc.property(int32, (n) => {
        const bytes = new Encoder().writeVarInt(n).buffer;
        expect(bytes).toEqual(reference(BigInt(n), 32n));
        expect(new Decoder(bytes).readVarInt()).toBe(n);
      }),
    );
    for (const n of [0, -1, 1, 63, -64, 64, 2 ** 31 - 1, -(2 ** 31)])
      expect(new Encoder().writeVarInt(n).buffer).toEqual(reference(BigInt(n), 32n));
  });

  it("writes varlongs the same from the 32-bit path and from Longs", () => {
    fc.assert(
      fc.property(fc.oneof(int32, fc.maxSafeInteger()), (n) => {
        const bytes = new Encoder().writeVarLong(n).buffer;
        expect(bytes).toEqual(reference(BigInt(n), 64n));
        expect(new Decoder(bytes).readVarLong().toString()).toBe(String(n));
      }),
    );
    const big = "-9223372036854775808";
    expect(new Encoder().writeVarLong(Long.fromString(big)).buffer).toEqual(reference(BigInt(big), 64n));
  });

  it("grows past its first buffer without losing or inventing bytes", () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 3000 }), { maxLength: 8 }), (chunks) => {
        const enc = new Encoder();
        for (const c of chunks) enc.writeInt32(c.length).writeVarIntBytes(Buffer.from(c));
        const d = new Decoder(enc.buffer);
        for (const c of chunks) {
          expect(d.readInt32()).toBe(c.length);
          expect(d.readVarIntBytes()).toEqual(Buffer.from(c));
        }
        expect(enc.buffer.length).toBe(
          chunks.reduce((n, c) => n + 4 + reference(BigInt(c.length), 32n).length + c.length, 0),
        );
      }),
      { numRuns: 50 },
    );
  });

  it("encode a whole produce request exactly as kafkajs's own methods do, whatever the pool held", async () => {
    // Keys and values with multi-byte and lone-surrogate text, empty and
    // multi-KB values, headers, and timestamps far from the batch's first.
    const text = fc.string({ unit: "binary", maxLength: 40 });
    const message = fc.record({
      key: fc.oneof(text, fc.constant(null)),
      value: fc.oneof(
        fc.uint8Array({ maxLength: 5000 }).map((b) => Buffer.from(b)),
        text.map((t) => Buffer.from(t)),
      ),
      headers: fc.dictionary(fc.string({ minLength: 1, maxLength: 12 }), text, { maxKeys: 3 }),
      // Given, so both encodings see the same clock (kafkajs takes Date.now() for a message without).
      timestamp: fc.integer({ min: 1_600_000_000_000, max: 1_900_000_000_000 }),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(message, { minLength: 1, maxLength: 30 }), async (messages) => {
        const request = () =>
          ProduceV3({
            acks: -1,
            timeout: 30_000,
            topicData: [
              { topic: "custody.provenance", partitions: [{ partition: 0, firstSequence: 0, messages }] },
            ],
          }).encode();
        dirtyThePool();
        const ours = (await request()).buffer;
        dirtyThePool();
        const theirs = (await withOriginalMethods(request)).buffer;
        expect(ours.equals(theirs)).toBe(true);
      }),
      { numRuns: 60 },
    );
  });

  it("encodes a record kafkajs's record decoder reads back", () => {
    const value = Buffer.from(`{"data":"${"x".repeat(1500)}"}`);
    const bytes = Record({
      offsetDelta: 999,
      timestampDelta: 1234,
      key: "00000000-0000-4000-8000-000000000001",
      value,
      headers: { "content-type": "application/cloudevents+json" },
    }).buffer;
    const d = new Decoder(bytes);
    const length = d.readVarInt();
    expect(length).toBe(bytes.length - reference(BigInt(length), 32n).length);
    const r = decodeRecord(d, { firstOffset: "100", firstTimestamp: "1000", magicByte: 2 });
    expect(r.offset).toBe("1099");
    expect(r.timestamp).toBe("2234");
    expect(r.key.toString()).toBe("00000000-0000-4000-8000-000000000001");
    expect(r.value).toEqual(value);
    expect(r.headers["content-type"]?.toString()).toBe("application/cloudevents+json");
  });
});
