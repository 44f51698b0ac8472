// The audit index: a local node:sqlite file that holds every record of one
// provenance topic the CLI has read, with the columns `custody audit` looks
// events up by (task UID, certificate serial, SPIFFE ID, pod). Scanning the
// topic per question cannot answer in a second at scale (kafkajs joins a
// consumer group per run and reads everything); the index reads only what is
// new since its last run.
//
// How it stays consistent with the stream (docs/events.md, "The audit index"):
// - It only appends: per partition it stores the next offset to read, and a
//   run reads from there up to the high-water mark seen at its start, in one
//   transaction per fetched batch together with the new offsets, so a crash
//   or a failed read leaves it exactly as it was after its last batch.
// - It notices a rewritten topic instead of mixing two histories: the record
//   at the last offset it indexed is re-read and must have the same bytes; a
//   partition that now ends before that offset, a vanished partition or
//   another Kafka cluster behind the brokers are mismatches too. It then
//   refuses to answer (IndexMismatchError) until rebuilt, and a rebuild keeps
//   the old file beside the new one as evidence.
// - Records deleted by retention before it read them are a recorded gap.
// - It checks each event's hash chain as it goes (canonical form, custodyhash,
//   custodyprev against the event before it in its stream, byte-identical
//   re-sends, two events at one seq) and keeps the verdict per event. It does
//   not check signatures (that needs the public keys); `custody audit` checks
//   those of the events it shows, and `custody verify` checks the whole topic.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, renameSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { DatabaseSync, type StatementSync } from "node:sqlite";
import type { PartitionOffsets, ReadRange, RecordSource, SourceRecord } from "./kafka-source.ts";

/** Bumped when the schema changes; an index of another version must be rebuilt. */
export const INDEX_SCHEMA_VERSION = "2";

/**
 * The index's verdict on one record, from the hash chain alone:
 * - linked: custodyprev is the hash of the indexed event before it (or the genesis hash at seq 1);
 * - unlinked: the event before it is not indexed (yet: a later run may bring it, or retention took it);
 * - broken: the event before it is indexed and custodyprev is not its hash;
 * - fork: another event already holds this stream and seq;
 * - duplicate: byte-identical to a record indexed before (a re-send; not another event);
 * - altered: not in canonical form, or custodyhash does not match the content;
 * - malformed: not a readable event.
 */
export type ChainStatus = "linked" | "unlinked" | "broken" | "fork" | "duplicate" | "altered" | "malformed";

/** Statuses of events that take part in the chain (their hash is what they claim). */
const SOUND = ["linked", "unlinked", "broken", "fork"] as const;

export interface IndexedEvent {
  readonly partition: number;
  readonly offset: number;
  readonly status: ChainStatus;
  /** Why the status is not `linked`. */
  readonly note: string | null;
  readonly id: string | null;
  readonly type: string | null;
  readonly time: string | null;
  readonly subject: string | null;
  readonly stream: string | null;
  readonly seq: number | null;
  readonly epoch: number | null;
  readonly hash: string | null;
  readonly kid: string | null;
  /** It carries custodysig; an unsealed event is covered by the next sealed one of its stream ({@link AuditIndex.sealOf}). */
  readonly sealed: boolean;
  readonly taskUid: string | null;
  readonly namespace: string | null;
  readonly name: string | null;
  readonly chainUids: readonly string[];
  readonly spiffeId: string | null;
  readonly serial: string | null;
  /** The Kafka record value, exactly as read. */
  readonly record: Uint8Array;
}

/** How far after an unsealed event its seal may be (a writer seals every send of at most 1,000). */
const MAX_SEAL_DISTANCE = 10_000;

interface RunRow {
  rowid: number;
  seq: number;
  epoch: number | null;
  prev: string | null;
  hash: string | null;
  kid: string | null;
  sealed: number;
}

/** A sealed event, as the audit needs it to check the signature that covers earlier events. */
export interface Seal {
  readonly seq: number;
  readonly kid: string | null;
  readonly record: Uint8Array;
}

export interface RetentionGap {
  readonly partition: number;
  /** First offset never read (inclusive) .. first offset still in the log (exclusive). */
  readonly from: number;
  readonly to: number;
}

export interface UpdateReport {
  /** Records read from the topic in this run (not counting the re-read check records). */
  readonly read: number;
  readonly byStatus: Readonly<Partial<Record<ChainStatus, number>>>;
  readonly gaps: readonly RetentionGap[];
  readonly ms: number;
}

export class IndexMismatchError extends Error {
  readonly file: string;
  constructor(file: string, message: string) {
    super(
      `index ${file} disagrees with the topic: ${message}. The topic may have been rewritten: ` +
        "run `custody verify`, then rebuild the index with --rebuild-index (the old index is kept beside it)",
    );
    this.name = "IndexMismatchError";
    this.file = file;
  }
}

/** `$XDG_CACHE_HOME/custody/audit-<hash of the brokers>-<topic>.sqlite` (~/.cache when unset). */
export function defaultIndexFile(brokers: readonly string[], topic: string): string {
  const cache = process.env.XDG_CACHE_HOME || join(homedir(), ".cache");
  const cluster = createHash("sha256")
    .update([...brokers].sort().join(","))
    .digest("hex")
    .slice(0, 12);
  return join(cache, "custody", `audit-${cluster}-${topic}.sqlite`);
}

export interface OpenOptions {
  readonly topic: string;
  /** Start from an empty index; an existing file is renamed to `<file>.superseded-<time>` first. */
  readonly rebuild?: boolean;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS partitions (
  partition INTEGER PRIMARY KEY,
  next_offset INTEGER NOT NULL,
  last_offset INTEGER,
  last_sha256 TEXT
);
CREATE TABLE IF NOT EXISTS gaps (partition INTEGER NOT NULL, from_offset INTEGER NOT NULL, to_offset INTEGER NOT NULL, noticed TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  rowid INTEGER PRIMARY KEY,
  partition INTEGER NOT NULL,
  "offset" INTEGER NOT NULL,
  record_sha256 TEXT NOT NULL,
  status TEXT NOT NULL,
  note TEXT,
  id TEXT, type TEXT, time TEXT, subject TEXT,
  stream TEXT, seq INTEGER, epoch INTEGER, prev TEXT, hash TEXT, kid TEXT, sealed INTEGER NOT NULL DEFAULT 0,
  task_uid TEXT, namespace TEXT, name TEXT, chain_uids TEXT,
  spiffe_id TEXT, serial TEXT, pod_namespace TEXT, pod_name TEXT, pod_uid TEXT,
  UNIQUE (partition, "offset")
);
-- The record bytes, apart: the events table stays small, so lookups and scans stay quick.
CREATE TABLE IF NOT EXISTS records (rowid INTEGER PRIMARY KEY, record BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS events_task ON events (task_uid);
CREATE INDEX IF NOT EXISTS events_name ON events (name, namespace);
CREATE INDEX IF NOT EXISTS events_spiffe ON events (spiffe_id);
CREATE INDEX IF NOT EXISTS events_pod ON events (pod_name, pod_namespace);
CREATE INDEX IF NOT EXISTS events_pod_uid ON events (pod_uid);
CREATE INDEX IF NOT EXISTS events_stream_seq ON events (stream, seq);
CREATE INDEX IF NOT EXISTS events_unplaced ON events (record_sha256) WHERE seq IS NULL;
-- Every serial an event names (issued/renewed certificate, previousSerial, revoked serials, ...).
CREATE TABLE IF NOT EXISTS serials (serial TEXT NOT NULL, event INTEGER NOT NULL, PRIMARY KEY (serial, event)) WITHOUT ROWID;
`;

// chain.ts loads zod (~0.25 s) with events.ts: only runs that read new records need it.
type Checkers = {
  canonicalForms: typeof import("../core/provenance/chain.ts").canonicalForms;
  sha256Hex: typeof import("../core/provenance/chain.ts").sha256Hex;
  genesis: string;
};

async function loadCheckers(): Promise<Checkers> {
  const [chain, events] = await Promise.all([
    import("../core/provenance/chain.ts"),
    import("../core/provenance/events.ts"),
  ]);
  return {
    canonicalForms: chain.canonicalForms,
    sha256Hex: chain.sha256Hex,
    genesis: events.GENESIS_HASH,
  };
}

export class AuditIndex {
  readonly file: string;
  readonly topic: string;
  /** Set when opening with rebuild moved an existing index aside. */
  readonly superseded: string | null;
  readonly #db: DatabaseSync;
  readonly #stmt: ReturnType<typeof prepare>;

  private constructor(file: string, topic: string, db: DatabaseSync, superseded: string | null) {
    this.file = file;
    this.topic = topic;
    this.#db = db;
    this.superseded = superseded;
    this.#stmt = prepare(db);
  }

  static open(file: string, opts: OpenOptions): AuditIndex {
    let superseded: string | null = null;
    if (file !== ":memory:") {
      mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
      if (opts.rebuild && existsSync(file)) {
        superseded = `${file}.superseded-${new Date().toISOString().replace(/[:.]/g, "-")}`;
        renameSync(file, superseded);
      }
    }
    const db = new DatabaseSync(file);
    try {
      // Several CLI runs may share an index: a writer waits for another instead of failing.
      // A 64 MB page cache keeps the indexes' B-trees in memory while a large
      // topic is indexed; 16 KiB pages (set before the first table) mean fewer
      // writes per commit. Measured: about half the time per record of the defaults.
      db.exec(
        "PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -65536; PRAGMA page_size = 16384;",
      );
      db.exec(SCHEMA);
      const get = (key: string) =>
        (db.prepare("SELECT value FROM meta WHERE key = ?").get(key) as { value: string } | undefined)?.value;
      const version = get("schema-version");
      const topic = get("topic");
      if (version === undefined) {
        db.prepare("INSERT INTO meta (key, value) VALUES (?, ?), (?, ?), (?, ?)").run(
          "schema-version",
          INDEX_SCHEMA_VERSION,
          "topic",
          opts.topic,
          "created",
          new Date().toISOString(),
        );
      } else if (version !== INDEX_SCHEMA_VERSION) {
        // The index is a cache of the topic: one of another layout is moved aside and rebuilt.
        if (file !== ":memory:" && !opts.rebuild) {
          db.close();
          return AuditIndex.open(file, { ...opts, rebuild: true });
        }
        throw new Error(
          `index ${file}: schema version ${version}, this CLI writes version ${INDEX_SCHEMA_VERSION}`,
        );
      } else if (topic !== opts.topic) {
        throw new Error(`index ${file}: it indexes topic ${topic}, not ${opts.topic}: give another --index`);
      }
    } catch (err) {
      db.close();
      throw err;
    }
    return new AuditIndex(file, opts.topic, db, superseded);
  }

  close(): void {
    this.#db.close();
  }

  meta(key: string): string | undefined {
    return (this.#stmt.getMeta.get(key) as { value: string } | undefined)?.value;
  }

  #setMeta(key: string, value: string): void {
    this.#stmt.setMeta.run(key, value);
  }

  /** Reads what the topic holds beyond the index's offsets and indexes it. */
  async update(
    source: RecordSource,
    opts: { onWarning?: (message: string) => void; commitEvery?: number } = {},
  ): Promise<UpdateReport> {
    const started = performance.now();
    const warn = opts.onWarning ?? (() => undefined);
    if (source.topic !== this.topic)
      throw new Error(`index ${this.file} indexes topic ${this.topic}, not ${source.topic}`);
    const clusterId = await source.clusterId();
    const knownCluster = this.meta("kafka-cluster-id");
    if (knownCluster !== undefined && knownCluster !== clusterId) {
      throw new IndexMismatchError(
        this.file,
        `it was built from Kafka cluster ${knownCluster}, the brokers now belong to cluster ${clusterId}`,
      );
    }
    const offsets = await source.offsets();
    const plan = this.#plan(offsets);
    if (knownCluster === undefined) this.#setMeta("kafka-cluster-id", clusterId);

    // Statuses are reported as they stand after the run: an event read before
    // its predecessor is unlinked only until the predecessor arrives.
    const before = (this.#stmt.maxRowid.get() as { n: number | null }).n ?? 0;
    let read = 0;
    if (plan.ranges.length > 0) {
      const checkers = await loadCheckers();
      const gapsToRecord = new Map(plan.gaps.map((g) => [g.partition, g]));
      // Records and their partitions' offsets commit together, every
      // commitEvery records and at the end: what is committed is exactly what
      // was read. Larger transactions write each index page fewer times.
      const commitEvery = opts.commitEvery ?? 20_000;
      let pending = 0;
      let events = 0;
      // The event count (meta "events", re-sends not counted) moves with the rows it counts.
      const commit = () => {
        this.#stmt.addEvents.run(String(events));
        this.#db.exec("COMMIT");
        pending = 0;
        events = 0;
      };
      try {
        await source.read(plan.ranges, (records) => {
          if (pending === 0) this.#db.exec("BEGIN IMMEDIATE");
          const batch = this.#indexBatch(records, plan.checks, gapsToRecord, checkers, warn);
          read += batch.read;
          events += batch.events;
          pending += Math.max(batch.read, 1);
          if (pending >= commitEvery) commit();
        });
        if (pending > 0) commit();
      } catch (err) {
        if (this.#db.isTransaction) this.#db.exec("ROLLBACK");
        throw err;
      }
      for (const [partition, check] of plan.checks) {
        warn(
          `partition ${partition}: offset ${check.offset} (the last one indexed) could not be re-read to confirm the topic was not rewritten`,
        );
      }
    }
    this.#setMeta("updated", new Date().toISOString());
    const counts: Partial<Record<ChainStatus, number>> = {};
    for (const row of this.#stmt.statusesSince.all(before) as Array<{ status: ChainStatus; n: number }>)
      counts[row.status] = row.n;
    for (const g of plan.gaps) {
      warn(
        `partition ${g.partition}: offsets ${g.from}..${g.to - 1} were deleted by retention before this index read them`,
      );
    }
    return { read, byStatus: counts, gaps: plan.gaps, ms: performance.now() - started };
  }

  #plan(offsets: readonly PartitionOffsets[]) {
    const state = new Map(
      (this.#stmt.partitions.all() as unknown as PartitionRow[]).map((r) => [r.partition, r] as const),
    );
    const present = new Set(offsets.map((o) => o.partition));
    for (const partition of state.keys()) {
      if (!present.has(partition))
        throw new IndexMismatchError(this.file, `partition ${partition} no longer exists`);
    }
    const ranges: ReadRange[] = [];
    const checks = new Map<number, { offset: number; sha: string }>();
    const gaps: RetentionGap[] = [];
    for (const o of offsets) {
      const s = state.get(o.partition);
      const next = BigInt(s?.next_offset ?? 0);
      if (o.high < next) {
        throw new IndexMismatchError(
          this.file,
          `partition ${o.partition} now ends below offset ${o.high}, but the index read it up to offset ${next - 1n}`,
        );
      }
      if (o.high === next) continue;
      let from = next;
      if (s?.last_offset != null && s.last_sha256 != null && BigInt(s.last_offset) >= o.low) {
        // Re-read the last indexed record: its bytes must not have changed.
        from = BigInt(s.last_offset);
        checks.set(o.partition, { offset: s.last_offset, sha: s.last_sha256 });
      } else if (o.low > next) {
        gaps.push({ partition: o.partition, from: Number(next), to: Number(o.low) });
        from = o.low;
      }
      ranges.push({ partition: o.partition, from, to: o.high });
    }
    return { ranges, checks, gaps };
  }

  // Inside the caller's transaction: the records, then their partitions' offsets.
  #indexBatch(
    records: readonly SourceRecord[],
    checks: Map<number, { offset: number; sha: string }>,
    gaps: Map<number, RetentionGap>,
    checkers: Checkers,
    warn: (message: string) => void,
  ): { read: number; events: number } {
    let indexed = 0;
    let events = 0;
    const last = new Map<number, { offset: number; sha: string }>();
    for (const r of records) {
      const offset = Number(r.offset);
      const bytes = r.value ?? EMPTY;
      const sha = createHash("sha256").update(bytes).digest("hex");
      const check = checks.get(r.partition);
      if (check !== undefined) {
        checks.delete(r.partition);
        if (offset === check.offset) {
          if (sha !== check.sha) {
            throw new IndexMismatchError(
              this.file,
              `partition ${r.partition} offset ${offset} now holds other bytes than when it was indexed`,
            );
          }
          continue;
        }
        warn(
          `partition ${r.partition}: offset ${check.offset} (the last one indexed) is gone; reading from offset ${offset}`,
        );
      }
      const gap = gaps.get(r.partition);
      if (gap !== undefined) {
        this.#stmt.insertGap.run(gap.partition, gap.from, gap.to, new Date().toISOString());
        gaps.delete(r.partition);
      }
      if (this.#indexRecord(r.partition, offset, bytes, sha, checkers) !== "duplicate") events++;
      last.set(r.partition, { offset, sha });
      indexed++;
    }
    for (const [partition, { offset, sha }] of last) {
      this.#stmt.setPartition.run(partition, offset + 1, offset, sha);
    }
    return { read: indexed, events };
  }

  #indexRecord(partition: number, offset: number, bytes: Uint8Array, sha: string, c: Checkers): ChainStatus {
    const s = this.#stmt;
    let status: ChainStatus;
    let note: string | null = null;
    let fields: Fields = NO_FIELDS;
    let value: unknown;
    let text: string | null = null;
    try {
      text = UTF8.decode(bytes);
      value = JSON.parse(text);
      fields = fieldsOf(value);
    } catch {
      value = undefined;
    }
    const problem = value === undefined ? null : envelopeProblem(value);
    const placed = value !== undefined && problem === null;
    // Every question about this record is about its stream neighbours
    // (seq - 1 .. seq + 1): one indexed query answers them all.
    const near = placed
      ? (s.near.all(fields.stream, fields.seq! - 1, fields.seq! + 1) as unknown as NearRow[])
      : [];
    const original = placed
      ? near.find((r) => r.seq === fields.seq && r.record_sha256 === sha)
      : (s.bySha.get(sha) as { partition: number; offset: number } | undefined);
    if (original !== undefined) {
      status = "duplicate";
      note = `byte-identical re-send of partition ${original.partition} offset ${original.offset}`;
    } else if (value === undefined) {
      status = "malformed";
      note = text === null ? "record is not UTF-8" : "record is not JSON";
    } else if (problem !== null) {
      status = "malformed";
      note = problem;
    } else {
      let forms: ReturnType<Checkers["canonicalForms"]> | null = null;
      try {
        forms = c.canonicalForms(value as Record<string, unknown>);
      } catch {
        forms = null;
      }
      if (forms === null) {
        status = "malformed";
        note = "record cannot be canonicalized";
      } else if (forms.record !== text) {
        status = "altered";
        note = "record is not in canonical form";
      } else if (c.sha256Hex(forms.hashInput) !== fields.hash) {
        status = "altered";
        note = "content does not match custodyhash";
      } else {
        ({ status, note } = link(fields, near, c.genesis));
      }
    }
    const result = s.insertEvent.run(
      partition,
      offset,
      sha,
      status,
      note,
      fields.id,
      fields.type,
      fields.time,
      fields.subject,
      placed ? fields.stream : null,
      placed ? fields.seq : null,
      fields.epoch,
      fields.prev,
      fields.hash,
      fields.kid,
      fields.sealed ? 1 : 0,
      fields.taskUid,
      fields.namespace,
      fields.name,
      fields.chainUids === null ? null : JSON.stringify(fields.chainUids),
      fields.spiffeId,
      fields.serials[0] ?? null,
      fields.podNamespace,
      fields.podName,
      fields.podUid,
    );
    const rowid = Number(result.lastInsertRowid);
    s.insertRecord.run(rowid, bytes);
    for (const serial of new Set(fields.serials)) s.insertSerial.run(serial, rowid);
    if ((SOUND as readonly string[]).includes(status)) {
      // An event read before its predecessor (another partition, an earlier run) links now.
      for (const succ of near) {
        if (succ.seq !== fields.seq! + 1 || succ.status !== "unlinked") continue;
        if (succ.prev === fields.hash) s.setStatus.run("linked", null, succ.rowid);
        else s.setStatus.run("broken", `custodyprev is not the hash of seq ${fields.seq}`, succ.rowid);
      }
    }
    return status;
  }

  // ------------------------------------------------------------ queries

  /** Task UIDs that events name with this namespace and name, most recent first. */
  taskUidsByName(name: string, namespace: string | null): string[] {
    return this.#uids(this.#stmt.uidsByName.all(name, namespace, namespace));
  }

  taskUidsBySerial(serial: string): string[] {
    return this.#uids(this.#stmt.uidsBySerial.all(serial));
  }

  taskUidsBySpiffeId(spiffeId: string): string[] {
    return this.#uids(this.#stmt.uidsBySpiffe.all(spiffeId));
  }

  /** By pod name (and namespace, when given) or by pod UID. */
  taskUidsByPod(pod: string, namespace: string | null): string[] {
    return this.#uids(this.#stmt.uidsByPod.all(pod, namespace, namespace, pod));
  }

  #uids(rows: unknown[]): string[] {
    return (rows as Array<{ task_uid: string }>).map((r) => r.task_uid);
  }

  /** A task's events, re-sends left out, in stream order (time, then stream and seq). */
  eventsOfTask(taskUid: string): IndexedEvent[] {
    return (this.#stmt.eventsOfTask.all(taskUid) as unknown as EventRow[]).map(toEvent);
  }

  /**
   * The seal covering an unsealed event: walking forward from it, each next
   * seq must hold exactly one event (copies of one event count once), chain
   * to the one before by its exact hash and be of the same epoch, up to the
   * first sealed one, whose signature then covers this event. Otherwise why not.
   */
  sealOf(
    event: Pick<IndexedEvent, "stream" | "seq" | "epoch" | "hash">,
  ): Seal | { readonly problem: string } {
    if (event.stream === null || event.seq === null || event.epoch === null || event.hash === null)
      return { problem: "the event names no stream" };
    let expected = event.hash;
    let at = event.seq;
    let group: RunRow[] = [];
    const step = (): Seal | { readonly problem: string } | null => {
      const hashes = new Set(group.map((r) => r.hash));
      if (hashes.size > 1) return { problem: `seq ${at} holds more than one event` };
      const row = group.find((r) => r.sealed === 1) ?? group[0]!;
      if (row.prev !== expected) return { problem: `seq ${at} does not chain to seq ${at - 1}` };
      if (row.epoch !== event.epoch)
        return {
          problem: `seq ${at} is of epoch ${row.epoch}, not ${event.epoch}: a seal covers only its own epoch`,
        };
      if (row.sealed === 1) {
        const { record } = this.#stmt.recordOf.get(row.rowid) as { record: Uint8Array };
        return { seq: at, kid: row.kid, record };
      }
      expected = row.hash!;
      return null;
    };
    for (const row of this.#stmt.runAfter.iterate(
      event.stream,
      event.seq,
      event.seq + MAX_SEAL_DISTANCE,
    ) as Iterable<RunRow>) {
      if (row.seq === at) {
        group.push(row);
        continue;
      }
      if (group.length > 0) {
        const done = step();
        if (done !== null) return done;
      }
      if (row.seq !== at + 1) return { problem: `seq ${at + 1} is not in the index` };
      at = row.seq;
      group = [row];
    }
    if (group.length > 0) {
      const done = step();
      if (done !== null) return done;
    }
    return { problem: "no sealed event follows it in its stream (yet)" };
  }

  stats(): { events: number; partitions: number; updated: string | null; gaps: RetentionGap[] } {
    const events = Number(this.meta("events") ?? 0);
    const partitions = (this.#stmt.partitions.all() as unknown as PartitionRow[]).length;
    const gaps = (
      this.#stmt.gaps.all() as Array<{ partition: number; from_offset: number; to_offset: number }>
    ).map((g) => ({ partition: g.partition, from: g.from_offset, to: g.to_offset }));
    return { events, partitions, updated: this.meta("updated") ?? null, gaps };
  }
}

interface NearRow {
  rowid: number;
  seq: number;
  status: ChainStatus;
  hash: string | null;
  prev: string | null;
  record_sha256: string;
  partition: number;
  offset: number;
  epoch: number | null;
}

const isSound = (r: NearRow) => (SOUND as readonly string[]).includes(r.status);

// The verdict for a sound record from the indexed events around it.
function link(
  f: Fields,
  near: readonly NearRow[],
  genesis: string,
): { status: ChainStatus; note: string | null } {
  const seq = f.seq!;
  const other = near.find((r) => r.seq === seq && isSound(r));
  if (other !== undefined && other.hash === f.hash) {
    // The same event (same hash), sealed in one copy and not in the other.
    return {
      status: "duplicate",
      note: `the event of partition ${other.partition} offset ${other.offset}, differing only in its signature`,
    };
  }
  if (other !== undefined) {
    const epochs = other.epoch === f.epoch ? "" : ` (epoch ${f.epoch} there ${other.epoch})`;
    return {
      status: "fork",
      note: `another event holds seq ${seq}: partition ${other.partition} offset ${other.offset}${epochs}`,
    };
  }
  if (seq === 1) {
    return f.prev === genesis
      ? { status: "linked", note: null }
      : { status: "broken", note: "seq 1 does not chain from the genesis hash" };
  }
  const before = near.filter((r) => r.seq === seq - 1);
  const preds = before.filter(isSound);
  if (preds.length === 0) {
    return {
      status: "unlinked",
      note:
        before.length === 0
          ? `seq ${seq - 1} is not in the index`
          : `seq ${seq - 1} is ${before[0]!.status}: its hash cannot be trusted`,
    };
  }
  return preds.some((p) => p.hash === f.prev)
    ? { status: "linked", note: null }
    : { status: "broken", note: `custodyprev is not the hash of seq ${seq - 1}` };
}

const HEX64 = /^[0-9a-f]{64}$/;
const STREAM_ID = /^[\x21-\x7e]{1,256}$/;

// The envelope fields the index relies on, checked by hand: what an event
// must look like to be placed in its stream. (Full validation, signatures
// included, is custody verify's; zod here would cost ~40 µs per event.)
function envelopeProblem(value: unknown): string | null {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return "record: not a JSON object";
  const e = value as Record<string, unknown>;
  if (e.specversion !== "1.0") return 'specversion: must be "1.0"';
  for (const name of ["id", "source", "type", "time", "custodykid"]) {
    if (typeof e[name] !== "string" || e[name] === "") return `${name}: must be a non-empty string`;
  }
  if (e.custodysig !== undefined && (typeof e.custodysig !== "string" || e.custodysig === ""))
    return "custodysig: must be a non-empty string when present";
  if (typeof e.custodystream !== "string" || !STREAM_ID.test(e.custodystream))
    return "custodystream: must be 1..256 printable ASCII characters";
  if (!Number.isSafeInteger(e.custodyseq) || (e.custodyseq as number) < 1)
    return "custodyseq: must be an integer from 1";
  if (!Number.isSafeInteger(e.custodyepoch) || (e.custodyepoch as number) < 0)
    return "custodyepoch: must be an integer from 0";
  for (const name of ["custodyprev", "custodyhash"]) {
    if (typeof e[name] !== "string" || !HEX64.test(e[name] as string))
      return `${name}: must be 64 lowercase hex digits`;
  }
  if (typeof e.data !== "object" || e.data === null || Array.isArray(e.data))
    return "data: must be a JSON object";
  return null;
}

interface PartitionRow {
  partition: number;
  next_offset: number;
  last_offset: number | null;
  last_sha256: string | null;
}

interface EventRow {
  partition: number;
  offset: number;
  status: ChainStatus;
  note: string | null;
  id: string | null;
  type: string | null;
  time: string | null;
  subject: string | null;
  stream: string | null;
  seq: number | null;
  epoch: number | null;
  hash: string | null;
  kid: string | null;
  sealed: number;
  task_uid: string | null;
  namespace: string | null;
  name: string | null;
  chain_uids: string | null;
  spiffe_id: string | null;
  serial: string | null;
  record: Uint8Array;
}

function toEvent(r: EventRow): IndexedEvent {
  return {
    partition: r.partition,
    offset: r.offset,
    status: r.status,
    note: r.note,
    id: r.id,
    type: r.type,
    time: r.time,
    subject: r.subject,
    stream: r.stream,
    seq: r.seq,
    epoch: r.epoch,
    hash: r.hash,
    kid: r.kid,
    sealed: r.sealed === 1,
    taskUid: r.task_uid,
    namespace: r.namespace,
    name: r.name,
    chainUids: r.chain_uids === null ? [] : (JSON.parse(r.chain_uids) as string[]),
    spiffeId: r.spiffe_id,
    serial: r.serial,
    record: r.record,
  };
}

function prepare(db: DatabaseSync) {
  const p = (sql: string): StatementSync => db.prepare(sql);
  return {
    getMeta: p("SELECT value FROM meta WHERE key = ?"),
    setMeta: p(
      "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    ),
    partitions: p(
      "SELECT partition, next_offset, last_offset, last_sha256 FROM partitions ORDER BY partition",
    ),
    setPartition: p(
      `INSERT INTO partitions (partition, next_offset, last_offset, last_sha256) VALUES (?, ?, ?, ?)
       ON CONFLICT (partition) DO UPDATE SET next_offset = excluded.next_offset,
         last_offset = excluded.last_offset, last_sha256 = excluded.last_sha256`,
    ),
    insertGap: p("INSERT INTO gaps (partition, from_offset, to_offset, noticed) VALUES (?, ?, ?, ?)"),
    gaps: p("SELECT partition, from_offset, to_offset FROM gaps ORDER BY partition, from_offset"),
    // Records that name no stream and seq are deduplicated by their hash alone.
    bySha: p(
      `SELECT partition, "offset" FROM events WHERE record_sha256 = ? AND seq IS NULL AND status != 'duplicate' LIMIT 1`,
    ),
    near: p(
      `SELECT rowid, seq, status, hash, prev, record_sha256, partition, "offset", epoch FROM events
       WHERE stream = ? AND seq BETWEEN ? AND ? AND status != 'duplicate' ORDER BY rowid`,
    ),
    setStatus: p("UPDATE events SET status = ?, note = ? WHERE rowid = ?"),
    insertEvent: p(
      `INSERT INTO events (partition, "offset", record_sha256, status, note, id, type, time, subject,
         stream, seq, epoch, prev, hash, kid, sealed, task_uid, namespace, name, chain_uids,
         spiffe_id, serial, pod_namespace, pod_name, pod_uid)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ),
    insertRecord: p("INSERT INTO records (rowid, record) VALUES (?, ?)"),
    insertSerial: p("INSERT OR IGNORE INTO serials (serial, event) VALUES (?, ?)"),
    uidsByName: p(
      `SELECT task_uid FROM events WHERE name = ? AND (? IS NULL OR namespace = ?) AND task_uid IS NOT NULL
       GROUP BY task_uid ORDER BY MAX(rowid) DESC`,
    ),
    uidsBySerial: p(
      `SELECT e.task_uid FROM serials s JOIN events e ON e.rowid = s.event
       WHERE s.serial = ? AND e.task_uid IS NOT NULL GROUP BY e.task_uid ORDER BY MAX(e.rowid) DESC`,
    ),
    uidsBySpiffe: p(
      `SELECT task_uid FROM events WHERE spiffe_id = ? AND task_uid IS NOT NULL
       GROUP BY task_uid ORDER BY MAX(rowid) DESC`,
    ),
    uidsByPod: p(
      `SELECT task_uid FROM events WHERE ((pod_name = ? AND (? IS NULL OR pod_namespace = ?)) OR pod_uid = ?)
       AND task_uid IS NOT NULL GROUP BY task_uid ORDER BY MAX(rowid) DESC`,
    ),
    eventsOfTask: p(
      `SELECT e.partition, e."offset", e.status, e.note, e.id, e.type, e.time, e.subject, e.stream, e.seq,
         e.epoch, e.hash, e.kid, e.sealed, e.task_uid, e.namespace, e.name, e.chain_uids, e.spiffe_id, e.serial,
         r.record
       FROM events e JOIN records r ON r.rowid = e.rowid
       WHERE e.task_uid = ? AND e.status != 'duplicate' ORDER BY e.time, e.stream, e.seq, e.rowid`,
    ),
    // The events after a seq, in seq order: the walk to the seal covering an unsealed event.
    runAfter: p(
      `SELECT rowid, seq, epoch, prev, hash, kid, sealed FROM events
       WHERE stream = ? AND seq > ? AND seq <= ? AND status IN ('linked', 'unlinked', 'broken', 'fork')
       ORDER BY seq, rowid`,
    ),
    recordOf: p("SELECT record FROM records WHERE rowid = ?"),
    maxRowid: p("SELECT max(rowid) AS n FROM events"),
    statusesSince: p(
      "SELECT status, count(*) AS n FROM events WHERE rowid > ? GROUP BY status ORDER BY status",
    ),
    addEvents: p(
      `INSERT INTO meta (key, value) VALUES ('events', ?)
       ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + CAST(excluded.value AS INTEGER)`,
    ),
  } satisfies Record<string, StatementSync>;
}

// ------------------------------------------------------------ record fields

interface Fields {
  id: string | null;
  type: string | null;
  time: string | null;
  subject: string | null;
  stream: string | null;
  seq: number | null;
  epoch: number | null;
  prev: string | null;
  hash: string | null;
  kid: string | null;
  sealed: boolean;
  taskUid: string | null;
  namespace: string | null;
  name: string | null;
  chainUids: string[] | null;
  spiffeId: string | null;
  serials: string[];
  podNamespace: string | null;
  podName: string | null;
  podUid: string | null;
}

const NO_FIELDS: Fields = {
  id: null,
  type: null,
  time: null,
  subject: null,
  stream: null,
  seq: null,
  epoch: null,
  prev: null,
  hash: null,
  kid: null,
  sealed: false,
  taskUid: null,
  namespace: null,
  name: null,
  chainUids: null,
  spiffeId: null,
  serials: [],
  podNamespace: null,
  podName: null,
  podUid: null,
};

const EMPTY = new Uint8Array(0);
const UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

const str = (v: unknown): string | null => (typeof v === "string" ? v : null);
const int = (v: unknown): number | null => (Number.isSafeInteger(v) ? (v as number) : null);
const obj = (v: unknown): Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};

// What a record says about itself, read defensively: a malformed or altered
// record is still filed under the task it names, so the audit shows it flagged.
function fieldsOf(value: unknown): Fields {
  const e = obj(value);
  const data = obj(e.data);
  const context = obj(data.context);
  const certificate = obj(data.certificate);
  const pod = obj(data.pod);
  const subject = str(e.subject);
  const serials = [str(certificate.serial), str(data.serial), str(data.previousSerial)];
  if (Array.isArray(data.serials)) serials.push(...data.serials.map(str));
  const chainUids = Array.isArray(context.chainUids)
    ? context.chainUids.filter((u): u is string => typeof u === "string")
    : null;
  return {
    id: str(e.id),
    type: str(e.type),
    time: str(e.time),
    subject,
    stream: str(e.custodystream),
    seq: int(e.custodyseq),
    epoch: int(e.custodyepoch),
    prev: str(e.custodyprev),
    hash: str(e.custodyhash),
    kid: str(e.custodykid),
    sealed: e.custodysig !== undefined,
    taskUid: str(context.taskUid),
    namespace: str(context.namespace),
    name: str(context.name),
    chainUids,
    spiffeId: str(certificate.spiffeId) ?? (subject?.startsWith("spiffe://") ? subject : null),
    serials: serials.filter((s): s is string => s !== null),
    podNamespace: str(pod.namespace),
    podName: str(pod.name),
    podUid: str(pod.uid),
  };
}

/** Serials as events write them: lowercase hex, no colons, no leading 00 octets. */
export function normalizeSerial(serial: string): string {
  let s = serial.trim().toLowerCase().replace(/:/g, "");
  if (s.startsWith("0x")) s = s.slice(2);
  while (s.length > 2 && s.startsWith("00")) s = s.slice(2);
  return s;
}
