// kafkajs 2.2.4 (unmaintained) encodes every record with allocations that
// cost more than the rest of the provenance writer's per-event work: each
// varint becomes a JS array and a Buffer, and every encoder (one per record,
// one per header) starts with, and grows by, a fresh zero-filled ArrayBuffer
// outside Node's buffer pool. This replaces three methods of its Encoder
// prototype (shared by every kafkajs client in the process) with versions
// that write the same bytes without them:
//   - writeUVarInt writes LEB128 bytes straight into the buffer;
//   - writeVarLong takes the 32-bit path for numbers that fit (the bytes of a
//     zigzag varint do not depend on the width), Longs keep the original;
//   - ensureAvailable grows with Buffer.allocUnsafe: pooled for small sizes,
//     not zero-filled. Safe because an Encoder only ever exposes bytes below
//     its offset, and every method that advances the offset writes each byte
//     it passes (writeBufferInternal copies, the others write in place).
// and makes the constructor's buffer empty: it allocates
// `Buffer.alloc(Encoder.nextPowerOfTwo(511))`, so the static nextPowerOfTwo
// (whose only other caller is the ensureAvailable replaced here) answers 0,
// and the first write takes its 512 bytes from the pool instead.
// Only on kafkajs 2.2.4, whose internals this was checked against (another
// version keeps its own methods). test/unit/kafka-encoder.test.ts holds the
// bytes equal to a reference encoding, to what kafkajs's own Decoder reads
// back, and to what the original methods write for a whole produce request
// while the free part of the buffer pool holds stale bytes.
import { createRequire } from "node:module";

interface KafkajsEncoder {
  buf: Buffer;
  offset: number;
  ensureAvailable(length: number): void;
  writeUVarInt(value: number): KafkajsEncoder;
  writeVarInt(value: number): KafkajsEncoder;
  writeVarLong(value: unknown): KafkajsEncoder;
}

interface EncoderClass {
  prototype: KafkajsEncoder;
  nextPowerOfTwo(value: number): number;
}

/** kafkajs's first capacity (its constructor's default initialSize): 512 bytes once rounded up. */
const FIRST_CAPACITY = 511;

const require = createRequire(import.meta.url);
const Encoder = require("kafkajs/src/protocol/encoder") as EncoderClass;
const proto = Encoder.prototype;
const KAFKAJS_VERSION = (require("kafkajs/package.json") as { version: string }).version;
/** The kafkajs these replacements were written and checked against. */
const PATCHED_VERSION = "2.2.4";
const INT32_MIN = -(2 ** 31);
const INT32_MAX = 2 ** 31 - 1;

interface OriginalMethods {
  readonly ensureAvailable: KafkajsEncoder["ensureAvailable"];
  readonly writeUVarInt: KafkajsEncoder["writeUVarInt"];
  readonly writeVarLong: KafkajsEncoder["writeVarLong"];
  readonly nextPowerOfTwo: EncoderClass["nextPowerOfTwo"];
}

// Kept on the prototype: kafkajs's module is loaded once per process, this
// one may be evaluated again (e.g. by a test runner) after the replacement.
const patchedProto = proto as KafkajsEncoder & { custodyFast?: boolean; custodyOriginal?: OriginalMethods };
if (KAFKAJS_VERSION === PATCHED_VERSION && !patchedProto.custodyFast) {
  const original: OriginalMethods = Object.freeze({
    ensureAvailable: proto.ensureAvailable,
    writeUVarInt: proto.writeUVarInt,
    writeVarLong: proto.writeVarLong,
    nextPowerOfTwo: Encoder.nextPowerOfTwo,
  });
  Object.defineProperty(proto, "custodyOriginal", { value: original });
  const { nextPowerOfTwo } = original;
  Encoder.nextPowerOfTwo = () => 0;

  proto.ensureAvailable = function ensureAvailable(this: KafkajsEncoder, length: number): void {
    if (this.offset + length <= this.buf.length) return;
    const grown = Buffer.allocUnsafe(nextPowerOfTwo(Math.max(this.offset + length, FIRST_CAPACITY)));
    this.buf.copy(grown, 0, 0, this.offset);
    this.buf = grown;
  };

  proto.writeUVarInt = function writeUVarInt(this: KafkajsEncoder, value: number): KafkajsEncoder {
    // A 32-bit varint is at most 5 bytes.
    this.ensureAvailable(5);
    const buf = this.buf;
    let at = this.offset;
    let v = value;
    while ((v & 0xffffff80) !== 0) {
      buf[at++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    buf[at++] = v & 0x7f;
    this.offset = at;
    return this;
  };

  proto.writeVarLong = function writeVarLong(this: KafkajsEncoder, value: unknown): KafkajsEncoder {
    if (typeof value === "number" && Number.isInteger(value) && value >= INT32_MIN && value <= INT32_MAX)
      return this.writeVarInt(value);
    return original.writeVarLong.call(this, value);
  };

  Object.defineProperty(proto, "custodyFast", { value: true });
}

/** Whether kafkajs's Encoder carries the faster methods (for tests and diagnostics). */
export const kafkajsEncoderPatched = patchedProto.custodyFast === true;

/** kafkajs's own methods, as they were before the replacements (for tests); undefined if not replaced. */
export const originalEncoderMethods: OriginalMethods | undefined = patchedProto.custodyOriginal;
