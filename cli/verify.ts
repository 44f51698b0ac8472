// `custody verify`: reads the whole topic and runs verifyStreams on it
// (hash chain, signatures, forks, gaps, order, checkpoints), printing every
// finding with the event it names. Exit code 0 when clean, 1 with findings.
//
// It reads the topic directly, not through the audit index: verify must judge
// the topic as it is now, and the index only appends records beyond the
// offsets it has read, so it would not see an old offset rewritten. And
// verification needs every record anyway (each signature is checked): the
// cost is ES256 verification, not reading.
import type { KeyObject } from "node:crypto";
import type { Finding, StreamReport, VerifyReport } from "../core/provenance/verify.ts";
import {
  type Anchors,
  readAnchors,
  readCheckpointFlag,
  readKeysFile,
  type VerificationKeys,
} from "./anchors.ts";
import { bool, type FlagDef, KAFKA_FLAGS, KUBE_FLAGS, list, type ParsedArgs, str } from "./flags.ts";
import { KafkaTopicSource, type PartitionOffsets, TopicNotFoundError } from "./kafka-source.ts";
import { connectCluster, kafkaSettings, operatorNamespace, warn } from "./settings.ts";

export const VERIFY_USAGE = `usage: custody verify [--topic TOPIC] [--brokers HOST:PORT,...] [--keys FILE]
                      [--checkpoint FILE|JSON]... [--no-cluster] [--allow-retention-gap] [-o text|json]

Reads the whole provenance topic and checks every event: canonical form and
hash, signature, one event per stream and seq (forks), no gaps, the hash chain
and the order within each partition, and that every stream reaches its last
checkpoint anchored outside Kafka. Prints each finding with the event it names
(stream, seq, id, partition and offset). Exit code 0 when clean, 1 with
findings (or when verification could not run), 2 for bad flags.

flags:
  --topic TOPIC              provenance topic (default $CUSTODY_KAFKA_TOPIC, else custody.provenance)
  --brokers HOST:PORT,...    Kafka bootstrap brokers (default $CUSTODY_KAFKA_BROKERS)
  --keys FILE                public keys: a JWK Set, JWKs or PEM (default: jwks.json of the
                             ConfigMap custody-provenance in the operator's namespace)
  --checkpoint FILE|JSON     a signed checkpoint (or a JSON array of them), repeatable; added to the
                             checkpoints anchored in that ConfigMap
  --operator-namespace NS    the operator's namespace (default $CUSTODY_NAMESPACE, else custody-system)
  --no-cluster               do not contact the cluster: keys from --keys, checkpoints from --checkpoint
  --allow-retention-gap      accept streams whose first events were deleted by the topic's retention
  -o, --output text|json     output format (default text)
  --kubeconfig PATH, --context NAME
`;

export const VERIFY_FLAGS: readonly FlagDef[] = [
  ...KAFKA_FLAGS,
  ...KUBE_FLAGS,
  { names: ["--keys"], key: "keys", kind: "value" },
  { names: ["--checkpoint"], key: "checkpoint", kind: "list" },
  { names: ["--operator-namespace"], key: "operatorNamespace", kind: "value" },
  { names: ["--no-cluster"], key: "noCluster", kind: "bool" },
  { names: ["--allow-retention-gap"], key: "allowRetentionGap", kind: "bool" },
  { names: ["-o", "--output"], key: "output", kind: "value", choices: ["text", "json"] },
];

export interface VerifyResult {
  readonly topic: string;
  readonly partitions: readonly PartitionOffsets[];
  readonly keys: { readonly source: string; readonly kids: readonly string[] };
  readonly checkpoints: { readonly anchored: number; readonly given: number };
  readonly warnings: readonly string[];
  readonly report: VerifyReport;
}

export async function verifyCommand(args: ParsedArgs): Promise<number> {
  const { brokers, topic } = kafkaSettings(args);
  const given = list(args, "checkpoint").flatMap(readCheckpointFlag);
  const keysFile = str(args, "keys");
  const fileKeys = keysFile === undefined ? null : readKeysFile(keysFile);
  const warnings: string[] = [];

  let anchors: Anchors = { keys: null, checkpoints: [], problems: [] };
  if (!bool(args, "noCluster")) {
    const cluster = connectCluster(args);
    if ("error" in cluster) warnings.push(`cluster: ${cluster.error}`);
    else {
      try {
        anchors = await readAnchors(cluster.rest, operatorNamespace(args), fileKeys === null);
      } finally {
        cluster.rest.close();
      }
      warnings.push(...anchors.problems);
    }
  }
  if (anchors.checkpoints.length === 0 && given.length === 0) {
    warnings.push(
      "no checkpoints: a stream whose last events were removed cannot be told from a shorter one",
    );
  }
  const keys: VerificationKeys | null = fileKeys ?? anchors.keys;
  if (keys === null) {
    throw new Error(
      `no public keys to check signatures with: pass --keys FILE (a JWK Set)${warnings.length ? ` (${warnings.join("; ")})` : ""}`,
    );
  }

  const source = new KafkaTopicSource({ brokers, topic, onWarning: warn });
  let partitions: PartitionOffsets[];
  const records: Array<{ partition: number; offset: bigint; value: Uint8Array }> = [];
  try {
    partitions = await source.offsets().catch((err: unknown) => {
      if (err instanceof TopicNotFoundError) throw err;
      throw new Error(`Kafka at ${brokers.join(",")}: ${(err as Error).message}`);
    });
    await source.read(
      partitions.map((p) => ({ partition: p.partition, from: p.low, to: p.high })),
      (batch) => {
        for (const r of batch)
          records.push({ partition: r.partition, offset: r.offset, value: r.value ?? EMPTY });
      },
    );
  } finally {
    await source.close();
  }
  const { verifyStreams } = await import("../core/provenance/verify.ts");
  const report = verifyStreams(records, {
    keys: keys.keys as ReadonlyMap<string, KeyObject>,
    checkpoints: [...anchors.checkpoints, ...given],
    allowRetentionGap: bool(args, "allowRetentionGap"),
  });
  const result: VerifyResult = {
    topic,
    partitions,
    keys: { source: keys.source, kids: [...keys.keys.keys()] },
    checkpoints: { anchored: anchors.checkpoints.length, given: given.length },
    warnings,
    report,
  };
  // Warnings go to stderr in both formats (the JSON carries them too).
  for (const w of warnings) warn(w);
  if (str(args, "output") === "json")
    process.stdout.write(`${JSON.stringify(verifyJson(result), null, 2)}\n`);
  else process.stdout.write(renderVerify(result));
  return report.ok ? 0 : 1;
}

const EMPTY = new Uint8Array(0);

/** Every finding, streams' and unattributed, in report order. */
export function allFindings(report: VerifyReport): Finding[] {
  return [...report.unattributed, ...report.streams.flatMap((s) => s.findings)];
}

function counts(report: VerifyReport) {
  const c = { error: 0, warning: 0, info: 0 };
  for (const f of allFindings(report)) c[f.severity]++;
  return c;
}

export function verifyJson(r: VerifyResult) {
  return {
    ok: r.report.ok,
    topic: r.topic,
    records: r.report.records,
    partitions: r.partitions.map((p) => ({
      partition: p.partition,
      low: p.low.toString(),
      high: p.high.toString(),
    })),
    keys: r.keys,
    checkpoints: r.checkpoints,
    counts: counts(r.report),
    warnings: r.warnings,
    findings: allFindings(r.report),
    streams: r.report.streams.map((s) => ({ ...s, findings: undefined, errors: errorsOf(s) })),
  };
}

const errorsOf = (s: StreamReport) => s.findings.filter((f) => f.severity === "error").length;

/** One line per finding, then one per stream and a verdict. */
export function renderVerify(r: VerifyResult): string {
  const lines: string[] = [];
  const report = r.report;
  const kids = r.keys.kids.map((k) => k.slice(0, 8)).join(", ");
  lines.push(
    `topic ${r.topic}: ${report.records} records in ${r.partitions.length} partitions; ` +
      `keys from ${r.keys.source} (kid ${kids}); ` +
      `${r.checkpoints.anchored} anchored and ${r.checkpoints.given} given checkpoints`,
  );
  const findings = allFindings(report);
  if (findings.length > 0) lines.push("");
  for (const f of findings) lines.push(findingLine(f));
  if (report.streams.length > 0) lines.push("");
  for (const s of report.streams) {
    const range = s.first === null ? "no events" : `seq ${s.first}..${s.head?.seq}`;
    const head = s.head ? `, head ${s.head.hash.slice(0, 12)}` : "";
    const epoch = s.epoch === null ? "" : `, epoch ${s.epoch}`;
    const errors = errorsOf(s);
    lines.push(
      `stream ${s.stream}: ${s.events} events, ${range}${epoch}${head}: ${s.ok ? "ok" : `FAILED (${errors} ${errors === 1 ? "error" : "errors"})`}`,
    );
  }
  const c = counts(report);
  const failed = report.streams.filter((s) => !s.ok).length;
  lines.push("");
  lines.push(
    report.ok
      ? `verify: OK: ${report.streams.length} ${report.streams.length === 1 ? "stream" : "streams"}, ${c.warning} warnings, ${c.info} notes`
      : `verify: FAILED: ${c.error} ${c.error === 1 ? "error" : "errors"} in ${failed} of ${report.streams.length} streams` +
          `${report.unattributed.length ? ` and ${report.unattributed.length} unattributed` : ""}, ${c.warning} warnings, ${c.info} notes`,
  );
  return `${lines.join("\n")}\n`;
}

/** Human names for the finding kinds (JSON keeps the kind itself). */
export const KIND_LABEL: Readonly<Record<Finding["kind"], string>> = {
  malformed: "malformed",
  altered: "altered",
  "unknown-key": "unknown key",
  "bad-signature": "bad signature",
  unsealed: "unsealed",
  duplicate: "re-sent",
  fork: "forked",
  "stale-epoch": "stale epoch",
  missing: "missing",
  reordered: "reordered",
  truncated: "truncated",
};

export function findingLine(f: Finding): string {
  const where: string[] = [];
  if (f.stream !== null) where.push(f.stream);
  if (f.seq !== null) where.push(`seq ${f.seq}`);
  if (f.id !== null) where.push(`id ${f.id}`);
  if (f.partition !== null) where.push(`partition ${f.partition} offset ${f.offset}`);
  const severity = f.severity === "error" ? "ERROR" : f.severity === "warning" ? "WARN" : "note";
  return `${severity.padEnd(5)} ${KIND_LABEL[f.kind].padEnd(13)} ${where.join("  ")}: ${f.message}`;
}
