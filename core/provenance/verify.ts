/**
 * Verification of provenance streams as read from Kafka (pure: records and
 * keys in, a report out). Rules, in the order they are applied (docs/events.md):
 *
 * 1. Each record must be UTF-8 JSON in exactly its canonical form, with a
 *    well-typed envelope (`malformed` otherwise, or `altered` when it parses
 *    but is not canonical); its custodyhash must be the SHA-256 of its hash
 *    input (`altered`); its kid must be a known key (`unknown-key`) and its
 *    signature, when it has one (a sealed event), must verify (`bad-signature`).
 * 2. A record byte-identical to an earlier one is a re-send (`duplicate`,
 *    info) and counts once. A sealed record covers the unsealed records of
 *    its epoch that it reaches back along exact custodyprev hashes; an
 *    unsealed record no seal covers is `unsealed` (error), whatever its
 *    epoch or seq: anyone who can write to the topic could have written it.
 * 3. Per stream and seq, among the records that passed (1) and (2): the highest
 *    epoch wins; lower-epoch ones are a deposed writer's (`stale-epoch`,
 *    warning, excluded); two different winners are a `fork` (copies of one
 *    event, same custodyhash, that differ only in their signature are
 *    `duplicate`s).
 * 4. Walking seqs upward: an event whose epoch is below one already accepted
 *    is `stale-epoch` (excluded); a gap is `missing`; a custodyprev that is not
 *    the previous event's hash is `reordered`. Within one partition, an event
 *    at a higher offset than an event with a higher seq is `reordered`.
 *    Uncovered records hold a seq only when no covered one does; a run of
 *    them is reported once (a warning when a gap or an integrity error,
 *    already named, cuts it off from its seal).
 * 5. The stream must reach the highest verified checkpoint and agree with
 *    every checkpoint's hash (`truncated` otherwise).
 *
 * A stream is ok when it has no error finding; findings are sorted by seq,
 * kind, partition and offset, so a report is deterministic for its input.
 */
import type { JsonWebKey, KeyObject } from "node:crypto";
import { ValidationError } from "../errors.ts";
import { canonicalForms, type StreamHead, sha256Hex } from "./chain.ts";
import { type Checkpoint, verifyCheckpoint } from "./checkpoint.ts";
import { type Envelope, envelopeSchema, GENESIS_HASH } from "./events.ts";
import { createKeyRing, decodeBase64url, type KeyRing, verifyEs256 } from "./sign.ts";

export interface StreamRecord {
  readonly partition: number;
  /** Kafka offset (kafkajs gives strings). */
  readonly offset: string | number | bigint;
  readonly value: Uint8Array | string;
}

export const FINDING_KINDS = [
  "malformed",
  "altered",
  "unknown-key",
  "bad-signature",
  "unsealed",
  "duplicate",
  "fork",
  "stale-epoch",
  "missing",
  "reordered",
  "truncated",
] as const;
export type FindingKind = (typeof FINDING_KINDS)[number];
export type Severity = "error" | "warning" | "info";

export interface Finding {
  readonly kind: FindingKind;
  readonly severity: Severity;
  /** null only for a record too broken to name its stream. */
  readonly stream: string | null;
  readonly seq: number | null;
  readonly id: string | null;
  readonly partition: number | null;
  readonly offset: string | null;
  readonly message: string;
}

export interface StreamReport {
  readonly stream: string;
  readonly ok: boolean;
  /** Distinct events accepted into the chain. */
  readonly events: number;
  readonly first: number | null;
  /** The last accepted event (what a checkpoint of this stream would anchor). */
  readonly head: StreamHead | null;
  readonly epoch: number | null;
  readonly findings: readonly Finding[];
  /**
   * With `listAuthentic`: the accepted events that a verified signature
   * covers (sealed, or reached by a seal), as `partition:offset`. What a
   * program may act on; everything else could have been written by anyone
   * who can write to the topic.
   */
  readonly authentic?: ReadonlySet<string>;
}

export interface VerifyReport {
  readonly ok: boolean;
  readonly records: number;
  readonly streams: readonly StreamReport[];
  /** Findings about records (or checkpoints) that do not even name a stream. */
  readonly unattributed: readonly Finding[];
}

export interface VerifyOptions {
  /** Public keys by kid (each kid must be its key's RFC 7638 thumbprint). */
  readonly keys: ReadonlyMap<string, KeyObject | JsonWebKey>;
  /** Checkpoints as read from where they are anchored (verified here). */
  readonly checkpoints?: readonly unknown[];
  /**
   * The topic's retention may have deleted a stream's oldest events: accept a
   * stream whose first event is not seq 1. Off by default (then that is `missing`).
   */
  readonly allowRetentionGap?: boolean;
  /** Fill each stream report's `authentic`. */
  readonly listAuthentic?: boolean;
}

const SEVERITY: Readonly<Record<FindingKind, Severity>> = {
  malformed: "error",
  altered: "error",
  "unknown-key": "error",
  "bad-signature": "error",
  unsealed: "error",
  duplicate: "info",
  fork: "error",
  "stale-epoch": "warning",
  missing: "error",
  reordered: "error",
  truncated: "error",
};

interface Located {
  readonly partition: number;
  readonly offset: bigint;
  readonly text: string;
}

interface Parsed extends Located {
  readonly env: Envelope;
  /** It carries a signature (which then verified, unless broken). */
  readonly sealed: boolean;
  /** The first integrity rule it broke, if any. */
  readonly broken: "altered" | "unknown-key" | "bad-signature" | null;
}

const UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const ENCODER = new TextEncoder();

export function verifyStreams(records: readonly StreamRecord[], options: VerifyOptions): VerifyReport {
  const keys = createKeyRing(options.keys);
  const findings: Finding[] = [];
  const byStream = new Map<string, Map<number, Parsed[]>>();
  const firstCopy = new Map<string, Parsed | null>();

  for (const record of locate(records)) {
    const earlier = firstCopy.get(record.text);
    if (earlier !== undefined) {
      // A re-send (same bytes): benign, counted once. Copies of unreadable records are just as unreadable.
      findings.push(
        earlier === null
          ? finding("malformed", null, record, "record is a copy of an earlier unreadable record")
          : finding("duplicate", earlier.env, record, `byte-identical re-send of offset ${earlier.offset}`),
      );
      continue;
    }
    const parsed = parse(record, keys, findings);
    firstCopy.set(record.text, parsed);
    if (parsed === null) continue;
    const { custodystream: stream, custodyseq: seq } = parsed.env;
    let seqs = byStream.get(stream);
    if (seqs === undefined) {
      seqs = new Map();
      byStream.set(stream, seqs);
    }
    const candidates = seqs.get(seq);
    if (candidates === undefined) seqs.set(seq, [parsed]);
    else candidates.push(parsed);
  }

  const checkpoints = readCheckpoints(options.checkpoints ?? [], keys, findings);
  const names = new Set([...byStream.keys(), ...checkpoints.keys()]);
  const streams: StreamReport[] = [];
  for (const stream of [...names].sort()) {
    const own = findings.filter((f) => f.stream === stream);
    streams.push(
      verifyStream(stream, byStream.get(stream) ?? new Map(), checkpoints.get(stream) ?? [], options, own),
    );
  }
  const unattributed = sortFindings(findings.filter((f) => f.stream === null));
  return {
    ok: unattributed.length === 0 && streams.every((s) => s.ok),
    records: records.length,
    streams,
    unattributed,
  };
}

function verifyStream(
  stream: string,
  seqs: ReadonlyMap<number, readonly Parsed[]>,
  checkpoints: readonly Checkpoint[],
  options: VerifyOptions,
  findings: Finding[],
): StreamReport {
  // Rule 2b: which unsealed records a seal covers. From each sealed record
  // whose signature verified, walk back along exact custodyprev hashes
  // through unsealed records of the seal's epoch.
  const unsealedAt = new Map<string, Parsed[]>();
  for (const candidates of seqs.values()) {
    for (const c of candidates) {
      if (c.broken !== null || c.sealed) continue;
      const at = `${c.env.custodyseq}|${c.env.custodyhash}`;
      const list = unsealedAt.get(at);
      if (list === undefined) unsealedAt.set(at, [c]);
      else list.push(c);
    }
  }
  const covered = new Set<Parsed>();
  for (const candidates of seqs.values()) {
    for (const seal of candidates) {
      if (seal.broken !== null || !seal.sealed) continue;
      let cur: Parsed = seal;
      for (;;) {
        const next = unsealedAt
          .get(`${cur.env.custodyseq - 1}|${cur.env.custodyprev}`)
          ?.find((u) => u.env.custodyepoch === seal.env.custodyepoch && !covered.has(u));
        if (next === undefined) break;
        covered.add(next);
        cur = next;
      }
    }
  }
  /** Intact and signed: by itself (sealed) or by a seal that chains to it. */
  const authentic = (c: Parsed) => c.broken === null && (c.sealed || covered.has(c));
  /** Intact but no signature reaches it: anyone who can write to the topic could have written it. */
  const uncovered = (c: Parsed) => c.broken === null && !authentic(c);

  // Rule 3: pick each seq's occupant among the authentic records; an
  // uncovered one holds a seq only when nothing authentic does.
  const occupants = new Map<number, { readonly event: Parsed; readonly hashes: ReadonlySet<string> }>();
  for (const [seq, candidates] of seqs) {
    const trusted = candidates.filter(authentic);
    const unproven = candidates.filter(uncovered);
    if (trusted.length === 0) {
      // Every copy failed integrity or is unsealed (reported below): keep one
      // so the chain walk does not also call the seq missing.
      const seat = unproven[0] ?? candidates[0]!;
      occupants.set(seq, { event: seat, hashes: new Set([seat.env.custodyhash]) });
      for (const c of unproven.slice(1)) findings.push(loneUnsealed(c, `beside ${describe(seat)}`));
      continue;
    }
    const epoch = Math.max(...trusted.map((c) => c.env.custodyepoch));
    const winners = trusted.filter((c) => c.env.custodyepoch === epoch);
    // A sealed copy speaks for the event; copies with its hash are the same event.
    const first = winners.find((c) => c.sealed) ?? winners[0]!;
    const resent = (c: Parsed) =>
      finding("duplicate", c.env, c, `the event of ${describe(first)}, differing only in its signature`);
    for (const c of trusted) {
      if (c.env.custodyepoch < epoch) {
        findings.push(
          finding(
            "stale-epoch",
            c.env,
            c,
            `epoch ${c.env.custodyepoch} below epoch ${epoch} of ${describe(first)} at the same seq`,
          ),
        );
      } else if (c !== first && c.env.custodyhash === first.env.custodyhash) {
        findings.push(resent(c));
      } else if (c !== first) {
        findings.push(finding("fork", c.env, c, `differs from ${describe(first)} at the same seq`));
      }
    }
    for (const c of unproven) {
      // An unsealed copy of the event itself (its seal stripped and re-sent) changes nothing.
      if (c.env.custodyhash === first.env.custodyhash) findings.push(resent(c));
      else findings.push(loneUnsealed(c, `not the event the stream holds there, ${describe(first)}`));
    }
    occupants.set(seq, { event: first, hashes: new Set(winners.map((w) => w.env.custodyhash)) });
  }

  // Rule 4: walk the chain. Uncovered occupants gather in runs, each
  // reported once; only authentic events move the stream's epoch.
  const accepted: Parsed[] = [];
  const hashesAt = new Map<number, ReadonlySet<string>>();
  let previous: { seq: number; hashes: ReadonlySet<string>; broken: boolean } | null = null;
  let maxEpoch = -1;
  let run: Parsed[] = [];
  const endRun = (why: string, severity: Severity) => {
    if (run.length > 0) findings.push({ ...unsealedRun(run, why), severity });
    run = [];
  };
  for (const seq of [...occupants.keys()].sort((a, b) => a - b)) {
    const { event, hashes } = occupants.get(seq)!;
    const env = event.env;
    const broken = event.broken !== null;
    const unproven = uncovered(event);
    if (!broken && !unproven && env.custodyepoch < maxEpoch) {
      findings.push(
        finding(
          "stale-epoch",
          env,
          event,
          `epoch ${env.custodyepoch} after the stream reached epoch ${maxEpoch}`,
        ),
      );
      continue;
    }
    let gap = false;
    let mislinked = false;
    if (previous === null) {
      if (seq > 1 && !options.allowRetentionGap) findings.push(missing(stream, 1, seq - 1, event));
      else if (seq === 1 && !broken && env.custodyprev !== GENESIS_HASH) {
        findings.push(
          finding("reordered", env, event, "first event of the stream does not chain from the genesis hash"),
        );
      }
    } else if (seq > previous.seq + 1) {
      gap = true;
      findings.push(missing(stream, previous.seq + 1, seq - 1, event));
    } else if (!broken && !previous.broken && !previous.hashes.has(env.custodyprev)) {
      mislinked = true;
      findings.push(finding("reordered", env, event, `custodyprev is not the hash of seq ${previous.seq}`));
    }
    if (run.length > 0 && (!unproven || gap || mislinked || broken)) {
      // A run cut off by a hash that does not chain may hold an event altered
      // and re-hashed: an error. Behind a gap or an integrity error (already
      // named) nothing says the run was altered, only that no seal reaches it.
      if (mislinked) endRun(`seq ${seq} does not chain to them (one may have been altered)`, "error");
      else if (gap || broken) endRun(`the chain breaks before seq ${seq}`, "warning");
      else endRun(`seq ${seq} after them is of epoch ${env.custodyepoch}`, "error");
    }
    if (unproven) run.push(event);
    previous = { seq, hashes, broken };
    if (!broken && !unproven) maxEpoch = Math.max(maxEpoch, env.custodyepoch);
    accepted.push(event);
    hashesAt.set(seq, hashes);
  }
  endRun("no sealed event of their epoch follows them", "error");

  // Rule 4, offsets: per partition, seqs must rise with offsets.
  const byPartition = new Map<number, Parsed[]>();
  for (const event of accepted) {
    const list = byPartition.get(event.partition);
    if (list === undefined) byPartition.set(event.partition, [event]);
    else list.push(event);
  }
  for (const list of byPartition.values()) {
    list.sort((a, b) => (a.offset < b.offset ? -1 : a.offset > b.offset ? 1 : 0));
    let highest: Parsed | null = null;
    for (const event of list) {
      if (highest !== null && event.env.custodyseq < highest.env.custodyseq) {
        findings.push(finding("reordered", event.env, event, `stored after ${describe(highest)}`));
      } else highest = event;
    }
  }

  // Rule 5: checkpoints.
  const last = accepted[accepted.length - 1];
  const headSeq = last?.env.custodyseq ?? 0;
  let beyond: Checkpoint | null = null;
  for (const cp of checkpoints) {
    if (cp.seq > headSeq) {
      if (beyond === null || cp.seq > beyond.seq) beyond = cp;
      continue;
    }
    const hashes = hashesAt.get(cp.seq);
    if (cp.seq > 0 && hashes !== undefined && !hashes.has(cp.hash)) {
      const event = occupants.get(cp.seq)!.event;
      findings.push(
        finding(
          "truncated",
          event.env,
          event,
          `hash differs from the checkpoint anchored at ${cp.time}: the stream was rewritten`,
        ),
      );
    }
  }
  if (beyond !== null) {
    findings.push({
      kind: "truncated",
      severity: SEVERITY.truncated,
      stream,
      seq: beyond.seq,
      id: null,
      partition: null,
      offset: null,
      message: `stream ends at seq ${headSeq} before seq ${beyond.seq} of the checkpoint anchored at ${beyond.time}`,
    });
  }

  const sorted = sortFindings(findings);
  const authenticSet = options.listAuthentic
    ? new Set(accepted.filter(authentic).map((e) => `${e.partition}:${e.offset}`))
    : undefined;
  return {
    stream,
    ok: sorted.every((f) => f.severity !== "error"),
    events: accepted.length,
    first: accepted[0]?.env.custodyseq ?? null,
    head: last === undefined ? null : { seq: last.env.custodyseq, hash: last.env.custodyhash },
    epoch: maxEpoch < 0 ? null : maxEpoch,
    findings: sorted,
    ...(authenticSet ? { authentic: authenticSet } : {}),
  };
}

// Rules 1 and 2 for one record: null when it cannot be read as an event at all.
function parse(record: Located, keys: KeyRing, findings: Finding[]): Parsed | null {
  let value: unknown;
  try {
    value = JSON.parse(record.text);
  } catch {
    findings.push(finding("malformed", null, record, "record is not JSON"));
    return null;
  }
  const envelope = envelopeSchema.safeParse(value);
  if (!envelope.success) {
    const issue = envelope.error.issues[0]!;
    findings.push(
      finding(
        "malformed",
        partialEnvelope(value),
        record,
        `${issue.path.join(".") || "record"}: ${issue.message}`,
      ),
    );
    return null;
  }
  const env = envelope.data;
  let forms: ReturnType<typeof canonicalForms>;
  try {
    forms = canonicalForms(value as Record<string, unknown>);
  } catch (err) {
    const why = err instanceof ValidationError ? err.message : String(err);
    findings.push(finding("malformed", env, record, `record cannot be canonicalized: ${why}`));
    return null;
  }
  const sealed = env.custodysig !== undefined;
  const parsed = (broken: Parsed["broken"]): Parsed => ({ ...record, env, sealed, broken });
  if (forms.record !== record.text) {
    findings.push(finding("altered", env, record, "record is not in canonical form"));
    return parsed("altered");
  }
  if (sha256Hex(forms.hashInput) !== env.custodyhash) {
    findings.push(finding("altered", env, record, "content does not match custodyhash"));
    return parsed("altered");
  }
  const key = keys.get(env.custodykid);
  if (key === undefined) {
    findings.push(finding("unknown-key", env, record, `no public key with kid ${env.custodykid}`));
    return parsed("unknown-key");
  }
  if (!sealed) return parsed(null);
  const signature = decodeBase64url(env.custodysig!);
  if (signature === null || !verifyEs256(key, ENCODER.encode(forms.signatureInput), signature)) {
    findings.push(
      finding("bad-signature", env, record, `signature does not verify with key ${env.custodykid}`),
    );
    return parsed("bad-signature");
  }
  return parsed(null);
}

function* locate(records: readonly StreamRecord[]): Generator<Located> {
  const located = records.map((r, i): Located & { bytes: Uint8Array | string } => {
    if (!Number.isSafeInteger(r.partition) || r.partition < 0) {
      throw new ValidationError(
        `records[${i}].partition`,
        "integer",
        `records[${i}].partition: must be a non-negative integer (rule integer)`,
      );
    }
    let offset: bigint;
    try {
      offset = BigInt(r.offset);
    } catch {
      throw new ValidationError(
        `records[${i}].offset`,
        "integer",
        `records[${i}].offset: must be an integer (rule integer)`,
      );
    }
    return { partition: r.partition, offset, text: "", bytes: r.value };
  });
  located.sort(
    (a, b) => a.partition - b.partition || (a.offset < b.offset ? -1 : a.offset > b.offset ? 1 : 0),
  );
  for (const r of located) {
    let text: string;
    if (typeof r.bytes === "string") text = r.bytes;
    else {
      try {
        text = UTF8.decode(r.bytes);
      } catch {
        // Not UTF-8: keyed by a lone surrogate, which no decoded record can contain, so
        // it cannot collide with a readable record yet its copies still group as copies.
        text = `\ud800${Buffer.from(r.bytes).toString("hex")}`;
      }
    }
    yield { partition: r.partition, offset: r.offset, text };
  }
}

function readCheckpoints(
  values: readonly unknown[],
  keys: KeyRing,
  findings: Finding[],
): Map<string, Checkpoint[]> {
  const byStream = new Map<string, Checkpoint[]>();
  for (const value of values) {
    const verdict = verifyCheckpoint(value, keys);
    if (verdict.ok) {
      const list = byStream.get(verdict.checkpoint.stream);
      if (list === undefined) byStream.set(verdict.checkpoint.stream, [verdict.checkpoint]);
      else list.push(verdict.checkpoint);
      continue;
    }
    const v = (typeof value === "object" && value !== null ? value : {}) as Record<string, unknown>;
    const stream = typeof v.stream === "string" ? v.stream : null;
    const seq = Number.isSafeInteger(v.seq) ? (v.seq as number) : null;
    findings.push({
      kind: verdict.kind,
      severity: SEVERITY[verdict.kind],
      stream,
      seq,
      id: null,
      partition: null,
      offset: null,
      message: `checkpoint: ${verdict.message}`,
    });
    // A checkpoint that does not verify anchors nothing, but its stream is still reported.
    if (stream !== null && !byStream.has(stream)) byStream.set(stream, []);
  }
  return byStream;
}

function finding(
  kind: FindingKind,
  env: Pick<Envelope, "custodystream" | "custodyseq" | "id"> | PartialEnvelope | null,
  at: Located,
  message: string,
): Finding {
  return {
    kind,
    severity: SEVERITY[kind],
    stream: env?.custodystream ?? null,
    seq: env?.custodyseq ?? null,
    id: env?.id ?? null,
    partition: at.partition,
    offset: at.offset.toString(),
    message,
  };
}

function missing(stream: string, from: number, to: number, next: Parsed): Finding {
  const range = from === to ? `seq ${from} is` : `seqs ${from}..${to} are`;
  return {
    kind: "missing",
    severity: SEVERITY.missing,
    stream,
    seq: from,
    id: null,
    partition: null,
    offset: null,
    message: `${range} missing before ${describe(next)}`,
  };
}

function unsealedRun(run: readonly Parsed[], why: string): Finding {
  const first = run[0]!;
  const last = run[run.length - 1]!;
  const range =
    run.length === 1
      ? `seq ${first.env.custodyseq} is`
      : `seqs ${first.env.custodyseq}..${last.env.custodyseq} are`;
  return finding("unsealed", first.env, first, `${range} unsealed and no signature covers them: ${why}`);
}

function loneUnsealed(c: Parsed, where: string): Finding {
  return finding("unsealed", c.env, c, `an unsealed record no signature covers at this seq, ${where}`);
}

interface PartialEnvelope {
  readonly custodystream: string | null;
  readonly custodyseq: number | null;
  readonly id: string | null;
}

// What a malformed record still says about itself, so the finding can name its stream.
function partialEnvelope(value: unknown): PartialEnvelope | null {
  if (typeof value !== "object" || value === null) return null;
  const v = value as Record<string, unknown>;
  if (typeof v.custodystream !== "string") return null;
  return {
    custodystream: v.custodystream,
    custodyseq: Number.isSafeInteger(v.custodyseq) ? (v.custodyseq as number) : null,
    id: typeof v.id === "string" ? v.id : null,
  };
}

function describe(event: Parsed): string {
  return `seq ${event.env.custodyseq} (id ${event.env.id}, partition ${event.partition} offset ${event.offset})`;
}

const KIND_ORDER = new Map(FINDING_KINDS.map((k, i) => [k, i]));

function sortFindings(findings: readonly Finding[]): Finding[] {
  const big = (o: string | null) => (o === null ? -1n : BigInt(o));
  return [...findings].sort(
    (a, b) =>
      (a.seq ?? Number.MAX_SAFE_INTEGER) - (b.seq ?? Number.MAX_SAFE_INTEGER) ||
      KIND_ORDER.get(a.kind)! - KIND_ORDER.get(b.kind)! ||
      (a.partition ?? -1) - (b.partition ?? -1) ||
      Number(big(a.offset) - big(b.offset)) ||
      (a.message < b.message ? -1 : a.message > b.message ? 1 : 0),
  );
}
