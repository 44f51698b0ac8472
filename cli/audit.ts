// `custody audit (TASK | --pod NAME | --serial HEX | --spiffe-id ID)`: what a
// task was allowed to do, what it did and under whose authority, from the
// audit index (cli/index.ts), which each run first brings up to date with the
// topic. When the index already holds everything up to the topic's
// high-water marks (one metadata and one offsets request tell), no consumer
// is started, which is what keeps an answer within a second.
import type { KeyObject } from "node:crypto";
import { canonicalMembers, joinMembers } from "../core/provenance/canonical-json.ts";
import { decodeBase64url, verifyEs256 } from "../core/provenance/sign.ts";
import { readAnchors, readKeysFile, type VerificationKeys } from "./anchors.ts";
import { buildAudit, renderAudit, type SignatureVerifier, type TaskAudit } from "./audit-answer.ts";
import { bool, type FlagDef, KAFKA_FLAGS, KUBE_FLAGS, type ParsedArgs, str, UsageError } from "./flags.ts";
import {
  AuditIndex,
  defaultIndexFile,
  IndexMismatchError,
  normalizeSerial,
  type UpdateReport,
} from "./index.ts";
import { KafkaTopicSource, TopicNotFoundError } from "./kafka-source.ts";
import { type Cluster, connectCluster, kafkaSettings, operatorNamespace, warn } from "./settings.ts";
import { mark } from "./timing.ts";

export const AUDIT_USAGE = `usage: custody audit (TASK | --pod NAME | --serial HEX | --spiffe-id ID) [-n NAMESPACE] [-o text|json]
                     [--topic TOPIC] [--brokers HOST:PORT,...] [--index FILE] [--rebuild-index] [--keys FILE]

Answers, from the provenance stream, for a task (by name, or by a pod it was
injected into, a certificate serial or a SPIFFE ID):
  what it was allowed to do   scope, ttl, policy decision, certificates and what became of them
  what it did                 its events in order: requested, delegation verified, issued, renewed,
                              injected, denied, revoked, expired, deleted ...
  under whose authority       the delegation chain from the human or workflow down to the task
It reads the topic through a local index, bringing it up to date first; the
signatures of the events shown are checked when public keys are available.

flags:
  -n, --namespace NS         namespace of TASK or of --pod (default: the kubeconfig context's, else default)
  --pod NAME                 a pod (name or uid) the task's credential was injected into
  --serial HEX               a certificate serial (colons and leading 00 are ignored)
  --spiffe-id ID             a task's SPIFFE ID
  --topic TOPIC              provenance topic (default $CUSTODY_KAFKA_TOPIC, else custody.provenance)
  --brokers HOST:PORT,...    Kafka bootstrap brokers (default $CUSTODY_KAFKA_BROKERS)
  --index FILE               the index file (default ~/.cache/custody/audit-<brokers hash>-<topic>.sqlite)
  --rebuild-index            start the index afresh (the old file is kept beside it)
  --keys FILE                public keys (default: jwks.json of the ConfigMap custody-provenance)
  --operator-namespace NS    the operator's namespace (default $CUSTODY_NAMESPACE, else custody-system)
  --no-cluster               do not contact the cluster (TASK is looked up by name in the events)
  -o, --output text|json     output format (default text)
  --kubeconfig PATH, --context NAME
`;

export const AUDIT_FLAGS: readonly FlagDef[] = [
  ...KAFKA_FLAGS,
  ...KUBE_FLAGS,
  { names: ["-n", "--namespace"], key: "namespace", kind: "value" },
  { names: ["--pod"], key: "pod", kind: "value" },
  { names: ["--serial"], key: "serial", kind: "value" },
  { names: ["--spiffe-id"], key: "spiffeId", kind: "value" },
  { names: ["--index"], key: "index", kind: "value" },
  { names: ["--rebuild-index"], key: "rebuildIndex", kind: "bool" },
  { names: ["--keys"], key: "keys", kind: "value" },
  { names: ["--operator-namespace"], key: "operatorNamespace", kind: "value" },
  { names: ["--no-cluster"], key: "noCluster", kind: "bool" },
  { names: ["-o", "--output"], key: "output", kind: "value", choices: ["text", "json"] },
];

export type AuditQuery =
  | { readonly kind: "task"; readonly name: string }
  | { readonly kind: "pod"; readonly name: string }
  | { readonly kind: "serial"; readonly serial: string }
  | { readonly kind: "spiffe-id"; readonly spiffeId: string };

export function parseQuery(args: ParsedArgs): AuditQuery {
  const pod = str(args, "pod");
  const serial = str(args, "serial");
  const spiffeId = str(args, "spiffeId");
  if (args.positional.length > 1) {
    throw new UsageError(
      `one task at a time, got ${args.positional.map((p) => JSON.stringify(p)).join(" ")}`,
    );
  }
  const given = [args.positional[0], pod, serial, spiffeId].filter((x) => x !== undefined);
  if (given.length !== 1) {
    throw new UsageError(
      given.length === 0
        ? "what to audit: give a TASK name, --pod NAME, --serial HEX or --spiffe-id ID"
        : "give only one of TASK, --pod, --serial and --spiffe-id",
    );
  }
  if (pod !== undefined) return { kind: "pod", name: pod };
  if (serial !== undefined) {
    const normalized = normalizeSerial(serial);
    if (!/^[0-9a-f]{1,40}$/.test(normalized))
      throw new UsageError(
        `--serial: must be a hex serial (e.g. 4f:1a:0c or 4f1a0c), got ${JSON.stringify(serial)}`,
      );
    return { kind: "serial", serial: normalized };
  }
  if (spiffeId !== undefined) {
    if (!spiffeId.startsWith("spiffe://"))
      throw new UsageError(`--spiffe-id: must start with spiffe://, got ${JSON.stringify(spiffeId)}`);
    return { kind: "spiffe-id", spiffeId };
  }
  return { kind: "task", name: args.positional[0]! };
}

interface IndexRun {
  readonly report: UpdateReport | null;
  /** Why the index could not be brought up to date (it answers as it was). */
  readonly error: string | null;
  readonly warnings: string[];
}

async function updateIndex(index: AuditIndex, brokers: string[], topic: string): Promise<IndexRun> {
  const warnings: string[] = [];
  const source = new KafkaTopicSource({
    brokers,
    topic,
    retries: 1,
    onWarning: (w) => warnings.push(w),
  });
  try {
    const report = await index.update(source, { onWarning: (w) => warnings.push(w) });
    return { report, error: null, warnings };
  } catch (err) {
    // A rewritten topic or a missing one is an answer in itself, not something to work around.
    if (err instanceof IndexMismatchError || err instanceof TopicNotFoundError) throw err;
    return { report: null, error: `Kafka at ${brokers.join(",")}: ${(err as Error).message}`, warnings };
  } finally {
    await source.close().catch(() => undefined);
  }
}

interface ClusterRun {
  readonly taskUid: string | null;
  readonly keys: VerificationKeys | null;
  readonly warnings: string[];
}

async function askCluster(
  cluster: Cluster,
  query: AuditQuery,
  namespace: string,
  args: ParsedArgs,
  wantKeys: boolean,
): Promise<ClusterRun> {
  const warnings: string[] = [];
  const lookup = async (): Promise<string | null> => {
    if (query.kind !== "task") return null;
    const path = `/apis/custody.dev/v1alpha1/namespaces/${encodeURIComponent(namespace)}/agenttasks/${encodeURIComponent(query.name)}`;
    try {
      return (await cluster.rest.get<{ metadata?: { uid?: string } }>(path)).metadata?.uid ?? null;
    } catch (err) {
      // Gone from the cluster is ordinary for an audit: its events still name it.
      if ((err as { code?: unknown }).code !== 404)
        warnings.push(`could not look up AgentTask ${namespace}/${query.name}: ${(err as Error).message}`);
      return null;
    }
  };
  const [taskUid, anchors] = await Promise.all([
    lookup(),
    wantKeys ? readAnchors(cluster.rest, operatorNamespace(args), true) : Promise.resolve(null),
  ]);
  if (wantKeys && anchors?.keys === null) warnings.push(...anchors.problems);
  return { taskUid, keys: anchors?.keys ?? null, warnings };
}

/**
 * JCS(event without custodysig): what canonicalForms in core/provenance/chain.ts
 * calls the signature input, built from canonical-json.ts directly because
 * chain.ts also loads events.ts and with it zod (~0.25 s, a quarter of the
 * audit's budget). A unit test keeps the two equal.
 */
export function signatureInput(value: Record<string, unknown>): string {
  return joinMembers(canonicalMembers(value).filter(([name]) => name !== "custodysig"));
}

function signatureVerifier(keys: ReadonlyMap<string, KeyObject>): SignatureVerifier {
  const utf8 = new TextDecoder();
  const encoder = new TextEncoder();
  return (record, kid) => {
    if (kid === null) return "unchecked";
    const key = keys.get(kid);
    if (key === undefined) return "unknown-key";
    try {
      const value = JSON.parse(utf8.decode(record)) as Record<string, unknown>;
      const signature = decodeBase64url(String(value.custodysig));
      const input = encoder.encode(signatureInput(value));
      return signature !== null && verifyEs256(key, input, signature) ? "verified" : "bad-signature";
    } catch {
      return "bad-signature";
    }
  };
}

export async function auditCommand(args: ParsedArgs): Promise<number> {
  mark("audit: modules loaded");
  const query = parseQuery(args);
  const { brokers, topic } = kafkaSettings(args);
  const fileKeys = str(args, "keys") === undefined ? null : readKeysFile(str(args, "keys")!);
  const file = str(args, "index") ?? defaultIndexFile(brokers, topic);
  const index = AuditIndex.open(file, { topic, rebuild: bool(args, "rebuildIndex") });
  const cluster = bool(args, "noCluster") ? null : connectCluster(args);
  try {
    const warnings: string[] = [];
    if (index.superseded)
      warnings.push(`rebuilding the index; the previous one is kept as ${index.superseded}`);
    if (cluster !== null && "error" in cluster) warnings.push(`cluster: ${cluster.error}`);
    const reachable = cluster !== null && !("error" in cluster) ? cluster : null;
    const namespace = str(args, "namespace") ?? reachable?.namespace ?? "default";
    // The index update (Kafka) and the cluster's answers do not depend on each other.
    const [run, asked] = await Promise.all([
      updateIndex(index, brokers, topic).finally(() => mark("audit: index up to date")),
      reachable
        ? askCluster(reachable, query, namespace, args, fileKeys === null).finally(() =>
            mark("audit: cluster answered"),
          )
        : Promise.resolve<ClusterRun>({ taskUid: null, keys: null, warnings: [] }),
    ]);
    warnings.push(...run.warnings, ...asked.warnings);
    if (run.error !== null) {
      const stats = index.stats();
      if (stats.events === 0) throw new Error(`cannot read topic ${topic}: ${run.error}`);
      warnings.push(`${run.error}; answering from the index as of ${stats.updated ?? "its last run"}`);
    }
    const keys = fileKeys ?? asked.keys;

    const uids = resolve(index, query, namespace, asked.taskUid, warnings);
    if (uids.length === 0) {
      const stats = index.stats();
      throw new Error(
        `no events in topic ${topic} name ${describeQuery(query, namespace)} (index ${index.file}: ${stats.events} events)`,
      );
    }
    const verifier = keys ? signatureVerifier(keys.keys) : undefined;
    const answers: TaskAudit[] = uids.map((uid) => buildAudit(index, uid, verifier));
    mark("audit: answered");
    const stats = index.stats();
    for (const w of warnings) warn(w);
    if (str(args, "output") === "json") {
      const out = {
        query: query.kind === "task" || query.kind === "pod" ? { ...query, namespace } : query,
        topic,
        index: {
          file: index.file,
          events: stats.events,
          updated: stats.updated,
          read: run.report?.read ?? null,
          retentionGaps: stats.gaps,
        },
        keys: keys ? { source: keys.source, kids: [...keys.keys.keys()] } : null,
        warnings,
        tasks: answers,
      };
      process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    } else {
      process.stdout.write(answers.map(renderAudit).join("\n"));
      const read = run.report ? `${run.report.read} new records read` : "not updated";
      process.stdout.write(
        `\n(topic ${topic}; index ${index.file}: ${stats.events} events, ${read}; ` +
          `${keys ? `keys from ${keys.source}` : "no public keys: signatures not checked"})\n`,
      );
    }
    mark("audit: output written");
    return 0;
  } finally {
    index.close();
    if (cluster !== null && !("error" in cluster)) cluster.rest.close();
  }
}

function resolve(
  index: AuditIndex,
  query: AuditQuery,
  namespace: string,
  clusterUid: string | null,
  warnings: string[],
): string[] {
  switch (query.kind) {
    case "task": {
      if (clusterUid !== null) {
        if (index.eventsOfTask(clusterUid).length > 0) return [clusterUid];
        warnings.push(
          `AgentTask ${namespace}/${query.name} (uid ${clusterUid}) has no events in the topic yet; showing earlier tasks of that name, if any`,
        );
      }
      const byName = index.taskUidsByName(query.name, namespace);
      if (byName.length > 0) return byName;
      // A task UID works too.
      return index.eventsOfTask(query.name).length > 0 ? [query.name] : [];
    }
    case "pod":
      return index.taskUidsByPod(query.name, namespace);
    case "serial":
      return index.taskUidsBySerial(query.serial);
    case "spiffe-id":
      return index.taskUidsBySpiffeId(query.spiffeId);
  }
}

function describeQuery(query: AuditQuery, namespace: string): string {
  switch (query.kind) {
    case "task":
      return `AgentTask ${namespace}/${query.name}`;
    case "pod":
      return `pod ${namespace}/${query.name}`;
    case "serial":
      return `serial ${query.serial}`;
    case "spiffe-id":
      return `SPIFFE ID ${query.spiffeId}`;
  }
}
