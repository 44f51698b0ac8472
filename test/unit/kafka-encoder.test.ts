// kafkajs's Encoder with Custody's faster methods (shells/kafka/encoder.ts)
// writes the bytes the Kafka protocol defines: zigzag LEB128 varints checked
// against a BigInt reference, and records kafkajs's own decoders read back.
import { createRequire } from "node:module";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { kafkajsEncoderPatched } from "../../shells/kafka/encoder.ts";

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
