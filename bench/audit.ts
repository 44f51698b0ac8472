/**
 * `custody audit` among 100,000 events, on the local environment (`make up`):
 *   1. writes N (default 100,000) events to a fresh topic with the operator's
 *      own parts (the stream writer: validate, canonicalize, hash, ES256 sign;
 *      the batching producer: idempotent, acks=all) and prints events/s from
 *      the first append to the last acknowledgement: the median of --rounds
 *      (default 3) rounds, each printed, against the floor of 20,000/s. Events
 *      describe 10 per task, two tasks per delegation chain, keyed by the
 *      chain's root like the operator's. One stream has one writer, and one
 *      writer signs on one core, so the floor is met with a writer per core
 *      (worker threads, one stream each, a chain always in the same stream:
 *      like one stream per writing replica); the rate of a single writer is
 *      printed too;
 *   2. checks that nothing was lost: each round's high-water marks add up to N;
 *   3. times the first `custody audit` (a fresh index: it reads the whole
 *      topic, checks every event's hash chain and indexes it);
 *   4. times `custody audit` cold for other tasks: each a fresh CLI process
 *      (bin/custody, from its start to its exit) with the index file from
 *      step 3 already current, so the run only asks Kafka for the high-water
 *      marks; floor 1 s. Once with Node's compile cache as any earlier CLI run
 *      leaves it, once with an empty one (a first CLI run on the machine);
 *   5. times an incremental run after 1,000 more events;
 *   6. `custody verify` over the whole topic: nothing lost, per-stream order
 *      kept, every signature good (and how long a full verification takes).
 * Usage: node bench/audit.ts [--events 100000] [--writers <cores>] [--rounds 3]
 */
import { spawnSync } from "node:child_process";
import { createPrivateKey, generateKeyPairSync, randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import { Kafka, logLevel } from "kafkajs";
import { createStreamWriter } from "../core/provenance/chain.ts";
import type { DelegationContext, EventData, EventInput } from "../core/provenance/events.ts";
import { createEs256Signer } from "../core/provenance/sign.ts";
import { CLOUDEVENTS_HEADERS } from "../operator/provenance.ts";
import { BatchingProducer } from "../shells/kafka/batching-producer.ts";
import type { LocalEnv } from "../test/env/local-env.ts";
import { cpuMeter } from "./local.ts";

const EVENTS_PER_TASK = 10;
/** Events per chain: a root and its sub-agent, 10 each. */
const PER_CHAIN = 2 * EVENTS_PER_TASK;
const D = (c: string) => c.repeat(64);
/** Appended events a writer lets wait for acknowledgement: a few of the producer's batches (1,000 each). */
const MAX_BACKLOG = 8000;

/** What a task's events share, made once per task as the operator has it at hand (not per event). */
interface Task {
  name: string;
  context: DelegationContext;
  spiffeId: string;
  /** Subject of the events before issuance: namespace/name. */
  pending: string;
  scope: string[];
  serials: string[];
  certificates: Array<EventData<"dev.custody.task.issued">["certificate"]>;
}

function task(ns: string, uid: string, name: string, chainUids: string[], now: number): Task {
  const spiffeId = `spiffe://custody.local/ns/${ns}/agent/bench/task/${name}`;
  const serials = Array.from(
    { length: 5 },
    (_, i) => `${uid.replace(/-/g, "").slice(0, 24)}${i.toString(16).padStart(8, "0")}`,
  );
  const notBefore = new Date(now).toISOString();
  const notAfter = new Date(now + 3_600_000).toISOString();
  return {
    name,
    context: { taskUid: uid, namespace: ns, name, chainUids, rootUid: chainUids[0]!, contextDigest: D("a") },
    spiffeId,
    pending: `${ns}/${name}`,
    scope: chainUids.length === 1 ? ["read:repos/acme/*", "comment:repos/acme/*"] : ["read:repos/acme/api"],
    serials,
    certificates: serials.map((serial) => ({
      serial,
      spiffeId,
      notBefore,
      notAfter,
      publicKeySha256: D("b"),
    })),
  };
}

/** The k-th event (0..9) of a task: a lifecycle with renewals, a pod, a revocation and the deletion. */
function eventOf(t: Task, k: number, time: string): EventInput {
  const { context, spiffeId } = t;
  const base = { id: randomUUID(), source: "custody.dev/operator/bench", subject: spiffeId, time };
  switch (k) {
    case 0:
      return {
        ...base,
        type: "dev.custody.task.requested",
        subject: t.pending,
        data: { context, requester: { username: "alice" }, agent: "bench", scope: t.scope, ttl: "1h" },
      };
    case 1:
      return {
        ...base,
        type: "dev.custody.task.delegation.verified",
        subject: t.pending,
        data: {
          context,
          delegator: { kind: "user", name: "alice" },
          depth: context.chainUids.length - 1,
          scope: t.scope,
        },
      };
    case 2:
      return { ...base, type: "dev.custody.task.issued", data: { context, certificate: t.certificates[0]! } };
    case 3:
      return {
        ...base,
        type: "dev.custody.task.injected",
        data: {
          context,
          pod: { namespace: context.namespace, name: `${t.name}-pod`, uid: randomUUID() },
          containers: ["agent"],
          serial: t.serials[0]!,
        },
      };
    case 4:
    case 5:
    case 6:
    case 7:
      return {
        ...base,
        type: "dev.custody.task.renewed",
        data: { context, certificate: t.certificates[k - 3]!, previousSerial: t.serials[k - 4]! },
      };
    case 8:
      return {
        ...base,
        type: "dev.custody.task.revoked",
        data: { context, serials: [t.serials[4]!], reason: "bench" },
      };
    default:
      return { ...base, type: "dev.custody.task.deleted", data: { context } };
  }
}

/** The events of chain c, root and sub-agent interleaved like concurrent work; keyed by the root. */
function* chainEvents(ns: string, c: number): Generator<{ key: string; input: EventInput }> {
  const now = Date.now();
  const time = new Date(now).toISOString();
  const rootUid = `00000000-0000-4000-8000-${c.toString(16).padStart(12, "0")}`;
  const childUid = `00000000-0000-4000-9000-${c.toString(16).padStart(12, "0")}`;
  const root = task(ns, rootUid, `task-${c}`, [rootUid], now);
  const child = task(ns, childUid, `task-${c}-sub`, [rootUid, childUid], now);
  for (let j = 0; j < PER_CHAIN; j++) {
    yield { key: rootUid, input: eventOf(j % 2 === 0 ? root : child, Math.floor(j / 2), time) };
  }
}

interface WriterJob {
  brokers: string;
  topic: string;
  ns: string;
  stream: string;
  keyPem: string;
  /** Chains first, first + step, ... below end. */
  first: number;
  step: number;
  end: number;
}

/** One stream writer and its producer: appends (and signs) every event of its chains, returns when all are acknowledged. */
async function writeChains(
  job: WriterJob,
  ready?: () => Promise<void>,
): Promise<{ events: number; seconds: number }> {
  const kafka = new Kafka({
    clientId: `bench-${job.stream}`,
    brokers: [job.brokers],
    logLevel: logLevel.NOTHING,
  });
  const signer = createEs256Signer(createPrivateKey(job.keyPem));
  const writer = createStreamWriter({ stream: job.stream, epoch: 1, signer });
  // Warm: the first append compiles the schemas; the first send connects.
  const producer = new BatchingProducer(kafka, { topic: job.topic });
  const warm = createStreamWriter({ stream: "warm", epoch: 1, signer });
  warm.append(chainEvents(job.ns, 0).next().value!.input);
  await ready?.();
  const started = performance.now();
  // The producer acknowledges in queue order, so waiting for one send waits
  // for every send before it: only recent sends are kept, to bound the queue.
  let last: Promise<void> = Promise.resolve();
  let recent: Array<Promise<void>> = [];
  // Every send gets a handler: only the last one is awaited.
  let failed: unknown;
  const noteFailure = (err: unknown) => {
    failed ??= err;
  };
  let n = 0;
  for (let c = job.first; c < job.end; c += job.step) {
    for (const { key, input } of chainEvents(job.ns, c)) {
      last = producer.send({ key, value: writer.append(input), headers: CLOUDEVENTS_HEADERS });
      last.catch(noteFailure);
      recent.push(last);
      // Let sends and acknowledgements run between appends.
      if (++n % 500 === 0) await new Promise((r) => setImmediate(r));
      if (producer.backlog > MAX_BACKLOG) await recent[recent.length - MAX_BACKLOG / 2];
      if (recent.length > MAX_BACKLOG) recent = recent.slice(-MAX_BACKLOG / 2);
    }
  }
  await last;
  if (failed !== undefined) throw failed;
  const seconds = (performance.now() - started) / 1000;
  await producer.stop();
  return { events: n, seconds };
}

if (!isMainThread) {
  // A writer thread: waits for "go" so that every writer starts together, warm.
  const job = workerData as WriterJob;
  const result = await writeChains(
    job,
    () =>
      new Promise<void>((resolve) => {
        parentPort!.once("message", () => resolve());
        parentPort!.postMessage("ready");
      }),
  );
  parentPort!.postMessage(result);
} else {
  await main();
}

async function main() {
  const argv = process.argv.slice(2);
  const flag = (name: string, fallback: number) => {
    const i = argv.indexOf(name);
    const value = i < 0 ? fallback : Number(argv[i + 1]);
    if (!Number.isInteger(value) || value < 1) throw new Error(`${name}: must be a positive integer`);
    return value;
  };
  const N = flag("--events", 100_000);
  const writers = flag("--writers", availableParallelism());
  const ROUNDS = flag("--rounds", 3);
  const chains = Math.ceil(N / PER_CHAIN);
  const repo = join(import.meta.dirname, "..");
  const env = JSON.parse(
    readFileSync(join(process.env.CUSTODY_ENV_DIR ?? join(repo, ".local", "env"), "env.json"), "utf8"),
  ) as LocalEnv;
  const run = randomUUID().slice(0, 6);
  const topic = `custody.bench.audit.${run}`;
  const ns = `bench-audit-${run}`;
  const PARTITIONS = 6;
  const work = mkdtempSync(join(tmpdir(), "custody-bench-audit-"));
  const fmt = (n: number) => Math.round(n).toLocaleString("en-US");
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const keyPem = privateKey.export({ format: "pem", type: "pkcs8" }).toString();
  const kid = createEs256Signer(privateKey).kid;
  const jwks = join(work, "jwks.json");
  writeFileSync(jwks, JSON.stringify({ keys: [{ ...publicKey.export({ format: "jwk" }), kid }] }));

  const custody = (args: string[], extraEnv: Record<string, string> = {}) => {
    const started = performance.now();
    const r = spawnSync(join(repo, "bin", "custody"), args, {
      env: {
        ...process.env,
        KUBECONFIG: env.kubeconfig,
        CUSTODY_KAFKA_BROKERS: env.kafkaBrokers,
        ...extraEnv,
      },
      encoding: "utf8",
      maxBuffer: 64 * 1024 * 1024,
    });
    const ms = performance.now() - started;
    if (r.status !== 0) throw new Error(`custody ${args.join(" ")} exited ${r.status}: ${r.stderr}`);
    // CUSTODY_CLI_TIMING=1 (inherited) makes each run say where its time went.
    for (const line of r.stderr.split("\n")) if (line.includes("timing:")) console.log(`      ${line}`);
    return { ms, stdout: r.stdout };
  };

  const kafka = new Kafka({
    clientId: "custody-bench-audit",
    brokers: [env.kafkaBrokers],
    logLevel: logLevel.NOTHING,
  });
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ waitForLeaders: true, topics: [{ topic, numPartitions: PARTITIONS }] });
  try {
    console.log(
      `audit bench: ${fmt(chains * PER_CHAIN)} events, ${fmt(chains * 2)} tasks, topic ${topic} (${PARTITIONS} partitions)`,
    );
    // All writers start together once warm; the rate runs from "go" to the last acknowledgement.
    const job = (w: number, into = topic): WriterJob => ({
      brokers: env.kafkaBrokers,
      topic: into,
      ns,
      stream: `operator/bench-${w}`,
      keyPem,
      first: w,
      step: writers,
      end: chains,
    });
    const writeRound = async (into: string) => {
      const threads = Array.from(
        { length: writers },
        (_, w) => new Worker(new URL(import.meta.url), { workerData: job(w, into) }),
      );
      await Promise.all(threads.map((t) => new Promise((r) => t.once("message", r))));
      const cpuSpent = cpuMeter();
      const started = performance.now();
      const results = await Promise.all(
        threads.map(
          (t) =>
            new Promise<{ events: number; seconds: number }>((resolve, reject) => {
              t.once("message", resolve);
              t.once("error", reject);
              t.postMessage("go");
            }),
        ),
      );
      const seconds = (performance.now() - started) / 1000;
      const cores = cpuSpent(seconds);
      const written = results.reduce((n, r) => n + r.events, 0);
      const offsets = await admin.fetchTopicOffsets(into);
      const stored = offsets.reduce((n, p) => n + Number(p.high) - Number(p.low), 0);
      return { eps: written / seconds, seconds, written, stored, cores };
    };
    // This machine's speed drifts by up to 1.7x within minutes, so the rate
    // is the median of several rounds, each printed. The first round writes
    // the topic the audit steps below read; the others write scratch topics.
    console.log(
      `  write, acks=all, idempotent, ${writers} writers (streams), ${fmt(chains * PER_CHAIN)} events a round:`,
    );
    const rounds: number[] = [];
    let lost = false;
    for (let r = 1; r <= ROUNDS; r++) {
      const into = r === 1 ? topic : `${topic}.round${r}`;
      if (r > 1)
        await admin.createTopics({
          waitForLeaders: true,
          topics: [{ topic: into, numPartitions: PARTITIONS }],
        });
      const round = await writeRound(into);
      if (round.stored !== round.written) lost = true;
      if (r > 1) await admin.deleteTopics({ topics: [into] }).catch(() => undefined);
      rounds.push(round.eps);
      // Cores busy per process ("this bench" is the writer threads): what each part costs.
      console.log(
        `    round ${r}  ${fmt(round.eps)} events/s, ${round.seconds.toFixed(2)} s, stored ${fmt(round.stored)} ${round.stored === round.written ? "(none lost)" : `(EXPECTED ${fmt(round.written)})`}; cores busy: ${round.cores}`,
      );
    }
    const eps = [...rounds].sort((a, b) => a - b)[Math.floor(rounds.length / 2)]!;
    console.log(
      `  write rate, median of ${ROUNDS} rounds  ${fmt(eps)} events/s  floor 20,000  ${eps >= 20_000 ? "ok" : "BELOW FLOOR"}`,
    );

    const index = join(work, "audit.sqlite");
    const base = ["--topic", topic, "-n", ns, "--index", index, "--keys", jwks, "-o", "json"];
    const first = custody(["audit", "task-7-sub", ...base]);
    const built = JSON.parse(first.stdout) as { index: { events: number; read: number } };
    console.log(
      `  first audit, index built      ${(first.ms / 1000).toFixed(2)} s (read and indexed ${fmt(built.index.read)} events: ${fmt(built.index.read / (first.ms / 1000))}/s)`,
    );

    // Cold: a fresh process each, the index current; tasks spread over the topic.
    const picks = [
      1,
      Math.floor(chains / 3),
      Math.floor(chains / 2) + 1,
      chains - 2,
      Math.floor(chains / 7),
    ].map((c) => `task-${c}${c % 2 ? "-sub" : ""}`);
    const times: number[] = [];
    for (const name of picks) {
      const r = custody(["audit", name, ...base]);
      const a = JSON.parse(r.stdout) as {
        index: { read: number };
        tasks: Array<{ events: unknown[]; integrity: { ok: boolean } }>;
      };
      if (a.tasks[0]?.events.length !== EVENTS_PER_TASK || !a.tasks[0].integrity.ok || a.index.read !== 0)
        throw new Error(`audit ${name}: unexpected answer ${r.stdout.slice(0, 400)}`);
      times.push(r.ms);
    }
    const max = Math.max(...times);
    const median = [...times].sort((a, b) => a - b)[Math.floor(times.length / 2)]!;
    console.log(
      `  audit one task, cold          median ${fmt(median)} ms, max ${fmt(max)} ms over ${times.length} tasks  floor 1,000 ms  ${max <= 1000 ? "ok" : "ABOVE FLOOR"}`,
    );
    const empty = custody(["audit", picks[0]!, ...base], {
      NODE_COMPILE_CACHE: join(work, "empty-compile-cache"),
    });
    console.log(`  ... with an empty compile cache ${fmt(empty.ms)} ms (the first CLI run on a machine)`);
    const text = custody(["audit", picks[1]!, ...base.slice(0, -2)]);
    console.log(`  ... text output               ${fmt(text.ms)} ms`);

    const more = await writeChains({ ...job(writers), first: chains, step: 1, end: chains + 50 });
    const incremental = custody(["audit", picks[0]!, ...base]);
    const inc = JSON.parse(incremental.stdout) as { index: { read: number } };
    console.log(
      `  audit after ${fmt(more.events)} new events    ${fmt(incremental.ms)} ms (read ${fmt(inc.index.read)} new events)`,
    );

    const verify = custody(["verify", "--topic", topic, "--keys", jwks, "--no-cluster", "-o", "json"]);
    const v = JSON.parse(verify.stdout) as {
      ok: boolean;
      records: number;
      streams: Array<{ events: number }>;
    };
    const inOrder = v.streams.reduce((n, s) => n + s.events, 0);
    console.log(
      `  custody verify, whole topic   ${v.ok ? "OK" : "FAILED"}: ${fmt(v.records)} records, ${fmt(inOrder)} events in order in ${v.streams.length} streams, ${(verify.ms / 1000).toFixed(2)} s`,
    );

    // One writer alone, for comparison (a sample: the rate is steady).
    const single = await writeChains({
      ...job(writers + 1),
      first: chains + 50,
      step: 1,
      end: chains + 50 + 1000,
    });
    console.log(
      `  (one writer alone             ${fmt(single.events / single.seconds)} events/s over ${fmt(single.events)} events)`,
    );
    if (!v.ok || lost || eps < 20_000 || max > 1000) process.exitCode = 1;
  } finally {
    await admin.deleteTopics({ topics: [topic] }).catch(() => undefined);
    await admin.disconnect();
    rmSync(work, { recursive: true, force: true });
  }
}
