/**
 * The stream writer: a pure state machine that numbers, chains and hashes
 * events for one stream and one writer epoch, and seals (signs) them.
 *
 * For an event E (all attributes and data):
 *   hash input      = JCS(E without custodyhash and custodysig)
 *   custodyhash     = hex SHA-256(hash input)
 *   signature input = JCS(E without custodysig)   (so it covers custodyhash)
 *   custodysig      = base64url ES256(signature input)
 *   record value    = JCS(E)                       (UTF-8)
 *
 * custodysig is optional: a writer seals the last event of each batch it
 * sends, and that signature covers, through custodyprev, every unsealed
 * event of the same writer epoch back to the previous sealed one (the
 * verifier requires such a seal; docs/events.md). One ES256 signature per
 * batch instead of per event is most of what makes the stream fast.
 *
 * The record value is itself canonical, so a retry re-sends the very same
 * bytes and the verifier can tell a re-send from a fork by comparing bytes.
 * The unsealed record value is exactly the signature input, so sealing only
 * adds a member. Given the same head and inputs the writer produces the same
 * records, except for the signature bytes (ECDSA is randomized).
 */
import { hash as oneShotHash } from "node:crypto";
import { ValidationError } from "../errors.ts";
import { canonicalize, canonicalMembers, joinMembers } from "./canonical-json.ts";
import {
  type CustodyEventOf,
  DATA_CONTENT_TYPE,
  type EventInputOf,
  type EventType,
  GENESIS_HASH,
  KEY_ID,
  MAX_INTEGER,
  parseEventInput,
  SPEC_VERSION,
  STREAM_ID,
} from "./events.ts";
import { ES256_SIGNATURE_BYTES, encodeBase64url, type Signer } from "./sign.ts";

/** The last event of a stream: seq 0 with the genesis hash for an empty stream. */
export interface StreamHead {
  readonly seq: number;
  readonly hash: string;
}

export const EMPTY_HEAD: StreamHead = { seq: 0, hash: GENESIS_HASH };

const HASH_MEMBER_PREFIX = `,"custodyhash":"`;
/** The custodyhash member with its 64 hex digits not yet written. */
const HASH_MEMBER_HOLE = `${HASH_MEMBER_PREFIX}${"0".repeat(64)}"`;

export interface StreamWriterOptions {
  readonly stream: string;
  /** The writer's epoch (e.g. the Lease's leaseTransitions): never lower than an earlier writer's. */
  readonly epoch: number;
  readonly signer: Signer;
  /** The committed head to continue from; an empty stream when absent. */
  readonly head?: StreamHead;
}

/** An appended event: numbered, chained and hashed, its record bytes made (the sealed ones on demand, once). */
export interface AppendedEvent<T extends EventType> {
  /**
   * The event without custodysig (what the hash and a signature cover),
   * parsed from the record bytes on first access: members in canonical
   * order, undefined members left out.
   */
  readonly event: Omit<CustodyEventOf<T>, "custodysig">;
  readonly seq: number;
  readonly hash: string;
  /**
   * The record value without a signature: valid in the stream only when a
   * later sealed event of the same writer epoch chains back to it.
   */
  unsealed(): Buffer;
  /** The record value with custodysig; signs on the first call, later calls return the same bytes. */
  sealed(): Buffer;
}

export interface StreamWriter {
  readonly stream: string;
  readonly epoch: number;
  readonly kid: string;
  /** The head after the last append. */
  readonly head: StreamHead;
  /** Validates, numbers, chains and hashes one event; advances the head only on success. */
  append<T extends EventType>(input: EventInputOf<T>): AppendedEvent<T>;
}

export function createStreamWriter(options: StreamWriterOptions): StreamWriter {
  const { stream, epoch, signer } = options;
  if (typeof stream !== "string" || !STREAM_ID.test(stream)) {
    throw invalid("stream", "stream-id", "must be 1..256 printable ASCII characters");
  }
  checkInteger("epoch", epoch, 0);
  if (typeof signer?.kid !== "string" || !KEY_ID.test(signer.kid)) {
    throw invalid("signer.kid", "key-id", "must be a base64url SHA-256 JWK thumbprint (43 characters)");
  }
  let head = checkHead(options.head ?? EMPTY_HEAD);
  // The envelope's member names are fixed, so their canonical order is too:
  // custodyepoch, custodyhash, custodykid, custodyprev, custodyseq, custodysig,
  // custodystream, data, datacontenttype, id, source, specversion, subject,
  // time, type. The record is assembled from pieces in that order (a unit
  // test holds it equal to JCS of the event object).
  const epochMember = `{"custodyepoch":${epoch}`;
  const kidMember = `,"custodykid":${canonicalize(signer.kid)}`;
  const streamMember = `,"custodystream":${canonicalize(stream)}`;

  return {
    stream,
    epoch,
    kid: signer.kid,
    get head() {
      return head;
    },
    append<T extends EventType>(input: EventInputOf<T>): AppendedEvent<T> {
      const parsed = parseEventInput(input);
      const seq = head.seq + 1;
      if (seq > MAX_INTEGER)
        throw invalid("custodyseq", "max", `stream ${stream} is full (seq ${MAX_INTEGER})`);
      const prev = head.hash;
      const middle = `${kidMember},"custodyprev":"${prev}","custodyseq":${seq}`;
      const tail =
        `${streamMember},"data":${canonicalize(parsed.data)}` +
        `,"datacontenttype":"${DATA_CONTENT_TYPE}","id":${canonicalize(parsed.id)}` +
        `,"source":${canonicalize(parsed.source)},"specversion":"${SPEC_VERSION}"` +
        `,"subject":${canonicalize(parsed.subject)},"time":${canonicalize(parsed.time)}` +
        `,"type":${canonicalize(parsed.type)}}`;
      // One UTF-8 encoding serves both the hash and the record: the record
      // is encoded with the hash's place held by zeros, the hash is taken
      // over the bytes around that member (exactly the hash input), then
      // written into its place. Everything before `tail` is ASCII (the epoch
      // and seq digits, the checked base64url kid, the hex previous hash),
      // so character offsets there are byte offsets.
      const unsealedBytes = Buffer.from(`${epochMember}${HASH_MEMBER_HOLE}${middle}${tail}`, "utf8");
      const hashAt = epochMember.length + HASH_MEMBER_PREFIX.length;
      const hash = oneShotHash(
        "sha256",
        Buffer.concat([
          unsealedBytes.subarray(0, epochMember.length),
          unsealedBytes.subarray(epochMember.length + HASH_MEMBER_HOLE.length),
        ]),
        "hex",
      );
      unsealedBytes.write(hash, hashAt, "latin1");
      // Where the signature member goes: after custodykid, custodyprev and
      // custodyseq (the signature input is the unsealed record itself).
      const signedLength = epochMember.length + HASH_MEMBER_HOLE.length + middle.length;
      let sealedBytes: Buffer | undefined;
      let event: Omit<CustodyEventOf<T>, "custodysig"> | undefined;
      head = { seq, hash };
      return {
        seq,
        hash,
        // Read back from the record bytes, once, and only when asked for.
        get event() {
          event ??= JSON.parse(unsealedBytes.toString("utf8")) as Omit<CustodyEventOf<T>, "custodysig">;
          return event;
        },
        unsealed: () => unsealedBytes,
        sealed(): Buffer {
          if (sealedBytes === undefined) {
            const signature = signer.sign(unsealedBytes);
            if (!(signature instanceof Uint8Array) || signature.byteLength !== ES256_SIGNATURE_BYTES) {
              throw invalid("signer.sign", "es256-signature", "must return a 64-byte IEEE P1363 signature");
            }
            sealedBytes = Buffer.concat([
              unsealedBytes.subarray(0, signedLength),
              Buffer.from(`,"custodysig":"${encodeBase64url(signature)}"`, "latin1"),
              unsealedBytes.subarray(signedLength),
            ]);
          }
          return sealedBytes;
        },
      };
    },
  };
}

/** The three canonical forms of a parsed event (see the module comment). */
export interface CanonicalForms {
  readonly hashInput: string;
  readonly signatureInput: string;
  readonly record: string;
}

/** Canonical forms of an event object as read back (throws a ValidationError if it is not JSON-canonicalizable). */
export function canonicalForms(event: Readonly<Record<string, unknown>>): CanonicalForms {
  const members = canonicalMembers(event);
  const record = joinMembers(members);
  const withoutSig = members.filter(([name]) => name !== "custodysig");
  const signatureInput = joinMembers(withoutSig);
  const hashInput = joinMembers(withoutSig.filter(([name]) => name !== "custodyhash"));
  return { hashInput, signatureInput, record };
}

export function sha256Hex(text: string): string {
  // One-shot: no Hash object per event.
  return oneShotHash("sha256", text, "hex");
}

function checkHead(head: StreamHead): StreamHead {
  checkInteger("head.seq", head.seq, 0);
  if (typeof head.hash !== "string" || !/^[0-9a-f]{64}$/.test(head.hash)) {
    throw invalid("head.hash", "hex64", "must be 64 lowercase hex digits");
  }
  if (head.seq === 0 && head.hash !== GENESIS_HASH) {
    throw invalid("head.hash", "genesis", "must be the genesis hash (64 zeros) when head.seq is 0");
  }
  return { seq: head.seq, hash: head.hash };
}

function checkInteger(field: string, value: number, min: number): void {
  if (!Number.isSafeInteger(value) || value < min || value > MAX_INTEGER) {
    throw invalid(field, "integer", `must be an integer in ${min}..${MAX_INTEGER}`);
  }
}

function invalid(field: string, rule: string, message: string): ValidationError {
  return new ValidationError(field, rule, `${field}: ${message} (rule ${rule})`);
}
