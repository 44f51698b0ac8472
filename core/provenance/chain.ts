/**
 * The stream writer: a pure state machine that numbers, chains, hashes and
 * signs events for one stream and one writer epoch.
 *
 * For an event E (all attributes and data):
 *   hash input      = JCS(E without custodyhash and custodysig)
 *   custodyhash     = hex SHA-256(hash input)
 *   signature input = JCS(E without custodysig)   (so it covers custodyhash)
 *   custodysig      = base64url ES256(signature input)
 *   record value    = JCS(E)                       (UTF-8)
 *
 * The record value is itself canonical, so a retry re-sends the very same
 * bytes and the verifier can tell a re-send from a fork by comparing bytes.
 * Given the same head and inputs the writer produces the same record, except
 * for the signature bytes when the signer is randomized (ECDSA).
 */
import { createHash } from "node:crypto";
import { ValidationError } from "../errors.ts";
import { canonicalMembers, joinMembers } from "./canonical-json.ts";
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

export interface StreamWriterOptions {
  readonly stream: string;
  /** The writer's epoch (e.g. the Lease's leaseTransitions): never lower than an earlier writer's. */
  readonly epoch: number;
  readonly signer: Signer;
  /** The committed head to continue from; an empty stream when absent. */
  readonly head?: StreamHead;
}

export interface AppendResult<T extends EventType> {
  readonly event: CustodyEventOf<T>;
  /** The exact Kafka record value: UTF-8 canonical JSON of the event. */
  readonly bytes: Uint8Array;
}

export interface StreamWriter {
  readonly stream: string;
  readonly epoch: number;
  readonly kid: string;
  /** The head after the last append. */
  readonly head: StreamHead;
  /** Validates, numbers, chains, hashes and signs one event; advances the head only on success. */
  append<T extends EventType>(input: EventInputOf<T>): AppendResult<T>;
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

  return {
    stream,
    epoch,
    kid: signer.kid,
    get head() {
      return head;
    },
    append<T extends EventType>(input: EventInputOf<T>): AppendResult<T> {
      const parsed = parseEventInput(input);
      const seq = head.seq + 1;
      if (seq > MAX_INTEGER)
        throw invalid("custodyseq", "max", `stream ${stream} is full (seq ${MAX_INTEGER})`);
      const unsigned = {
        specversion: SPEC_VERSION,
        id: parsed.id,
        source: parsed.source,
        type: parsed.type,
        subject: parsed.subject,
        time: parsed.time,
        datacontenttype: DATA_CONTENT_TYPE,
        custodystream: stream,
        custodyseq: seq,
        custodyepoch: epoch,
        custodyprev: head.hash,
        custodykid: signer.kid,
        data: parsed.data,
      };
      const members = canonicalMembers(unsigned);
      const hash = sha256Hex(joinMembers(members));
      insertMember(members, "custodyhash", `"custodyhash":"${hash}"`);
      const signature = signer.sign(UTF8.encode(joinMembers(members)));
      if (!(signature instanceof Uint8Array) || signature.byteLength !== ES256_SIGNATURE_BYTES) {
        throw invalid("signer.sign", "es256-signature", "must return a 64-byte IEEE P1363 signature");
      }
      const sig = encodeBase64url(signature);
      insertMember(members, "custodysig", `"custodysig":"${sig}"`);
      const bytes = UTF8.encode(joinMembers(members));
      head = { seq, hash };
      const event = { ...unsigned, custodyhash: hash, custodysig: sig } as unknown as CustodyEventOf<T>;
      return { event, bytes };
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
  return createHash("sha256").update(text, "utf8").digest("hex");
}

const UTF8 = new TextEncoder();

// Keeps members sorted by name (UTF-16 code units), as canonicalMembers made them.
function insertMember(members: Array<readonly [string, string]>, name: string, member: string): void {
  let i = 0;
  while (i < members.length && members[i]![0] < name) i++;
  members.splice(i, 0, [name, member]);
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
