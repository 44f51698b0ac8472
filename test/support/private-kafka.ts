// A single-node KRaft broker of a test's own, on 127.0.0.1, from the same
// Kafka the local environment runs: a test may stop and restart it without
// touching the shared broker other test files use at the same time.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Kafka, logLevel } from "kafkajs";
import type { LocalEnv } from "../env/local-env.ts";
import { eventually } from "./eventually.ts";
import { freePort } from "./operator-process.ts";

export interface PrivateKafka {
  /** host:port, for CUSTODY_KAFKA_BROKERS. */
  readonly brokers: string;
  /** Starts the broker (again: same port, same data) and waits until it answers metadata requests. */
  start(): Promise<void>;
  /** Stops the broker (SIGKILL: down at once, as a crash or a partition looks to its clients). */
  stop(): Promise<void>;
  /** Stops it and deletes its data. */
  remove(): Promise<void>;
}

/** Kafka's cluster ids are 16 random bytes in URL-safe base64 without padding, not starting with "-". */
function clusterId(): string {
  for (;;) {
    const id = randomBytes(16).toString("base64url");
    if (!id.startsWith("-")) return id;
  }
}

export async function createPrivateKafka(env: LocalEnv): Promise<PrivateKafka> {
  const dir = mkdtempSync(join(tmpdir(), "custody-kafka-"));
  const port = await freePort();
  const controllerPort = await freePort();
  const props = join(dir, "kafka.properties");
  writeFileSync(
    props,
    [
      "process.roles=broker,controller",
      "node.id=1",
      `listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${controllerPort}`,
      `advertised.listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${controllerPort}`,
      "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
      "controller.listener.names=CONTROLLER",
      "inter.broker.listener.name=PLAINTEXT",
      `controller.quorum.bootstrap.servers=127.0.0.1:${controllerPort}`,
      `log.dirs=${join(dir, "data")}`,
      "num.partitions=3",
      "offsets.topic.replication.factor=1",
      "offsets.topic.num.partitions=3",
      "transaction.state.log.replication.factor=1",
      "transaction.state.log.min.isr=1",
      "share.coordinator.state.topic.replication.factor=1",
      "share.coordinator.state.topic.min.isr=1",
      "group.initial.rebalance.delay.ms=0",
      "auto.create.topics.enable=false",
      "",
    ].join("\n"),
  );
  const java = [
    "-Xms64m",
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-Djava.awt.headless=true",
    `-Dlog4j2.configurationFile=${join(env.stateDir, "kafka-log4j2.yaml")}`,
    "-cp",
    `${join(env.binDir, "..", "kafka", "libs")}/*`,
  ];
  execFileSync(
    "java",
    [...java, "kafka.tools.StorageTool", "format", "--standalone", "-t", clusterId(), "-c", props],
    { stdio: "pipe" },
  );
  const brokers = `127.0.0.1:${port}`;
  let child: ChildProcess | undefined;
  const output: string[] = [];

  const stop = async () => {
    const c = child;
    child = undefined;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise((r) => c.once("exit", r));
    c.kill("SIGKILL");
    await exited;
  };
  return {
    brokers,
    async start() {
      if (child) return;
      const c = spawn("java", [...java, "kafka.Kafka", props], { stdio: ["ignore", "pipe", "pipe"] });
      child = c;
      // The last lines only: enough to say why a start failed.
      const keep = (b: Buffer) => {
        output.push(...b.toString("utf8").split("\n").slice(0, 20));
        output.splice(0, Math.max(0, output.length - 50));
      };
      c.stdout?.on("data", keep);
      c.stderr?.on("data", keep);
      const kafka = new Kafka({
        clientId: "custody-test-private-kafka",
        brokers: [brokers],
        logLevel: logLevel.NOTHING,
        retry: { retries: 0 },
      });
      await eventually(
        async () => {
          if (c.exitCode !== null)
            throw new Error(`broker exited (${c.exitCode}): ${output.slice(-10).join("\n")}`);
          const admin = kafka.admin();
          try {
            await admin.connect();
            await admin.describeCluster();
          } finally {
            await admin.disconnect().catch(() => undefined);
          }
        },
        { timeoutMs: 90_000, intervalMs: 250 },
      );
    },
    stop,
    async remove() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
