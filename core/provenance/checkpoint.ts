/**
 * Signed checkpoints of stream heads, anchored outside Kafka (e.g. in a
 * Kubernetes object): a rewritten or truncated topic tail cannot take them
 * with it, so `verify` can require the stream to reach the last one.
 *
 * A checkpoint is a JSON object signed with the event scheme: `sig` is the
 * base64url ES256 signature over JCS(checkpoint without sig). Its `type`
 * (`dev.custody.checkpoint`) is no event type and it has no `specversion`,
 * so a checkpoint signature can never pass for an event's or the reverse.
 */
import { z } from "zod";
import { ValidationError } from "../errors.ts";
import { canonicalize } from "./canonical-json.ts";
import { hex64, KEY_ID, MAX_INTEGER, SIGNATURE, STREAM_ID } from "./events.ts";
import {
  decodeBase64url,
  ES256_SIGNATURE_BYTES,
  encodeBase64url,
  type KeyRing,
  type Signer,
  verifyEs256,
} from "./sign.ts";

export const CHECKPOINT_TYPE = "dev.custody.checkpoint";

export interface Checkpoint {
  readonly type: typeof CHECKPOINT_TYPE;
  readonly stream: string;
  /** Sequence number of the head event (0 for an empty stream). */
  readonly seq: number;
  /** custodyhash of the head event. */
  readonly hash: string;
  readonly epoch: number;
  /** RFC 3339, when the checkpoint was made. */
  readonly time: string;
  readonly kid: string;
  readonly sig: string;
}

export interface CheckpointInput {
  readonly stream: string;
  readonly seq: number;
  readonly hash: string;
  readonly epoch: number;
  readonly time: string;
  readonly signer: Signer;
}

const checkpointSchema = z.strictObject({
  type: z.literal(CHECKPOINT_TYPE),
  stream: z.string().regex(STREAM_ID, "must be 1..256 printable ASCII characters"),
  seq: z.int().min(0).max(MAX_INTEGER),
  hash: hex64,
  epoch: z.int().min(0).max(MAX_INTEGER),
  time: z
    .string()
    .regex(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})$/, "must be RFC 3339"),
  kid: z.string().regex(KEY_ID, "must be a base64url SHA-256 JWK thumbprint"),
  sig: z.string().regex(SIGNATURE, "must be a base64url ES256 signature"),
});

const UTF8 = new TextEncoder();

export function makeCheckpoint(input: CheckpointInput): Checkpoint {
  const { signer, ...head } = input;
  const unsigned = { type: CHECKPOINT_TYPE as typeof CHECKPOINT_TYPE, ...head, kid: signer.kid };
  // Validate the unsigned body with a placeholder signature, so errors name fields, not the signature.
  const checked = checkpointSchema.safeParse({ ...unsigned, sig: "A".repeat(86) });
  if (!checked.success) {
    const issue = checked.error.issues[0]!;
    const field = issue.path.join(".") || "checkpoint";
    throw new ValidationError(field, issue.code, `${field}: ${issue.message} (rule ${issue.code})`);
  }
  const signature = signer.sign(UTF8.encode(canonicalize(unsigned)));
  if (signature.byteLength !== ES256_SIGNATURE_BYTES) {
    throw new ValidationError(
      "signer.sign",
      "es256-signature",
      "signer.sign: must return a 64-byte signature",
    );
  }
  return { ...unsigned, sig: encodeBase64url(signature) };
}

export type CheckpointVerdict =
  | { readonly ok: true; readonly checkpoint: Checkpoint }
  | {
      readonly ok: false;
      readonly kind: "malformed" | "unknown-key" | "bad-signature";
      readonly message: string;
    };

/** Checks a checkpoint's shape, key and signature (as read back from wherever it was anchored). */
export function verifyCheckpoint(value: unknown, keys: KeyRing): CheckpointVerdict {
  const parsed = checkpointSchema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    return {
      ok: false,
      kind: "malformed",
      message: `${issue.path.join(".") || "checkpoint"}: ${issue.message}`,
    };
  }
  const checkpoint = parsed.data as Checkpoint;
  const key = keys.get(checkpoint.kid);
  if (key === undefined)
    return { ok: false, kind: "unknown-key", message: `no public key with kid ${checkpoint.kid}` };
  const { sig, ...unsigned } = checkpoint;
  const signature = decodeBase64url(sig);
  if (signature === null || !verifyEs256(key, UTF8.encode(canonicalize(unsigned)), signature)) {
    return {
      ok: false,
      kind: "bad-signature",
      message: `signature does not verify with key ${checkpoint.kid}`,
    };
  }
  return { ok: true, checkpoint };
}
