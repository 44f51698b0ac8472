// Record-batch compression for the provenance topic. kafkajs 2.2.4 ships
// only gzip; this registers zstd from node:zlib (native, Node >= 22.15) in
// kafkajs's codec table, so every Kafka client in this process (producers,
// the tail reader, the CLI's consumers) can write and read zstd batches.
//
// Why zstd by default: provenance is kept for good (retention -1) and its
// records are JSON that compresses about 10x at level 1 for ~3 µs per event;
// the batch CRC kafkajs computes in JavaScript then runs over a tenth of the
// bytes, which more than pays for the compression. Brokers support zstd since
// Kafka 2.1; other consumers of the topic need a zstd codec too (most have one).
import { constants, zstdCompressSync, zstdDecompressSync } from "node:zlib";
import kafkajs from "kafkajs";
// Cheaper record encoding for every kafkajs client in the process (./encoder.ts).
import "./encoder.ts";

const { CompressionCodecs, CompressionTypes } = kafkajs;

export const COMPRESSIONS = ["zstd", "gzip", "none"] as const;
export type Compression = (typeof COMPRESSIONS)[number];

// Level 1: the fastest of the positive levels, and here also the smallest output.
const ZSTD_LEVEL = 1;

// Synchronous on purpose: the batch is small (about 1 MB before compression),
// and a thread-pool hop per batch would cost more than it saves on 2 cores.
const zstd = {
  compress: async (encoder: { buffer: Buffer }): Promise<Buffer> =>
    zstdCompressSync(encoder.buffer, { params: { [constants.ZSTD_c_compressionLevel]: ZSTD_LEVEL } }),
  decompress: async (buffer: Buffer): Promise<Buffer> => zstdDecompressSync(buffer),
};

(CompressionCodecs as Record<number, () => typeof zstd>)[CompressionTypes.ZSTD] = () => zstd;

/** The kafkajs compression type for a name. */
export function compressionType(name: Compression): number {
  return name === "zstd"
    ? CompressionTypes.ZSTD
    : name === "gzip"
      ? CompressionTypes.GZIP
      : CompressionTypes.None;
}

/** CUSTODY_KAFKA_COMPRESSION (default zstd); a bad value names the variable and the choices. */
export function compressionFromEnv(env: NodeJS.ProcessEnv = process.env): Compression {
  const value = env.CUSTODY_KAFKA_COMPRESSION ?? "zstd";
  if (!(COMPRESSIONS as readonly string[]).includes(value))
    throw new Error(
      `invalid Kafka configuration:\n  CUSTODY_KAFKA_COMPRESSION: must be one of ${COMPRESSIONS.join(", ")} (got "${value}")`,
    );
  return value as Compression;
}
