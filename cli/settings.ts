// Settings verify and audit share: where Kafka is (flags, then the
// environment the operator also reads), which topic, and the cluster.
import { loadClusterCredentials } from "../shells/kube/credentials.ts";
import { KubeRest } from "../shells/kube/rest.ts";
import { DEFAULT_OPERATOR_NAMESPACE } from "./anchors.ts";
import { type ParsedArgs, str, UsageError } from "./flags.ts";
import { parseBrokers } from "./kafka-source.ts";

export const DEFAULT_TOPIC = "custody.provenance";
const TOPIC = /^[a-zA-Z0-9._-]{1,249}$/;

export function kafkaSettings(args: ParsedArgs): { brokers: string[]; topic: string } {
  const raw = str(args, "brokers") ?? process.env.CUSTODY_KAFKA_BROKERS;
  if (raw === undefined || raw.trim() === "") {
    throw new UsageError(
      "no Kafka brokers: pass --brokers host:port[,host:port] or set CUSTODY_KAFKA_BROKERS",
    );
  }
  let brokers: string[];
  try {
    brokers = parseBrokers(raw);
  } catch (err) {
    throw new UsageError(
      `${str(args, "brokers") ? "--brokers" : "CUSTODY_KAFKA_BROKERS"}: ${(err as Error).message}`,
    );
  }
  const topic = str(args, "topic") ?? process.env.CUSTODY_KAFKA_TOPIC ?? DEFAULT_TOPIC;
  if (!TOPIC.test(topic))
    throw new UsageError(`--topic: must be a Kafka topic name, got ${JSON.stringify(topic)}`);
  return { brokers, topic };
}

export function operatorNamespace(args: ParsedArgs): string {
  return str(args, "operatorNamespace") ?? process.env.CUSTODY_NAMESPACE ?? DEFAULT_OPERATOR_NAMESPACE;
}

export interface Cluster {
  readonly rest: KubeRest;
  /** The kubeconfig context's namespace, if it sets one. */
  readonly namespace: string | undefined;
}

/** The cluster as kubectl would reach it, or why not (the caller decides whether that matters). */
export function connectCluster(args: ParsedArgs): Cluster | { error: string } {
  try {
    const kubeconfig = str(args, "kubeconfig");
    const context = str(args, "context");
    const creds = loadClusterCredentials({
      ...(kubeconfig ? { kubeconfig } : {}),
      ...(context ? { context } : {}),
    });
    // Short: a CLI waiting 30 s on an unreachable API server helps nobody.
    return { rest: new KubeRest(creds, { connections: 1, timeoutMs: 5000 }), namespace: creds.namespace };
  } catch (err) {
    return { error: (err as Error).message };
  }
}

export function warn(message: string): void {
  process.stderr.write(`custody: warning: ${message}\n`);
}
