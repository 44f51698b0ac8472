/**
 * The admission server alone: `node bench/admission-server.ts [requests]`.
 * A trivial handler (allow, no patch) behind the real TLS + HTTP/2 shell, fed
 * a realistic pod AdmissionReview (~4 KB) by a local client. The server runs
 * in a worker thread so that client and server do not share an event loop.
 * Prints requests/s and p50/p99 latency, sequential (what one pod creation
 * waits) and 32 in flight (a burst), over HTTP/2 and, for comparison, over
 * HTTP/1.1 keep-alive; plus the server-side time per review (body end to
 * response written), which is what the webhook adds beyond the network hop.
 */
import { randomBytes } from "node:crypto";
import http2 from "node:http2";
import https from "node:https";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import { generateCa } from "../core/x509/ca.ts";
import { generateLeafKeyPair } from "../core/x509/mint.ts";
import { serialFromRandom } from "../core/x509/serial.ts";
import { mintServingCert } from "../core/x509/serving.ts";
import { startAdmissionServer } from "../shells/https/admission-server.ts";
import { silentLogger } from "../shells/log.ts";
import { allow } from "../webhook/admission.ts";

const PATH = "/admit/pods";

interface ServerWorkerData {
  role: "admission-bench-server";
  certPem: string;
  keyPem: string;
}

async function runServerWorker(data: ServerWorkerData): Promise<void> {
  let durations: number[] = [];
  const server = await startAdmissionServer({
    host: "127.0.0.1",
    port: 0,
    routes: { [PATH]: async () => allow() },
    tls: { certPem: data.certPem, keyPem: data.keyPem },
    log: silentLogger,
    observe: (_path, ms) => durations.push(ms),
  });
  parentPort!.on("message", async (m: string) => {
    if (m === "take") {
      parentPort!.postMessage({ durations });
      durations = [];
    } else if (m === "close") {
      await server.close();
      parentPort!.postMessage({ closed: true });
    }
  });
  parentPort!.postMessage({ port: server.port });
}

function samplePodReview(): string {
  const container = (i: number) => ({
    name: `c${i}`,
    image: `registry.example.com/team-a/agent-${i}@sha256:${"ab".repeat(32)}`,
    args: ["--serve", "--port=8080", "--log-format=json"],
    env: Array.from({ length: 8 }, (_, j) => ({ name: `VAR_${j}`, value: `value-${j}-${"x".repeat(20)}` })),
    resources: { requests: { cpu: "100m", memory: "128Mi" }, limits: { memory: "256Mi" } },
    volumeMounts: [{ name: "data", mountPath: "/data" }],
    securityContext: { runAsNonRoot: true, allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] } },
  });
  return JSON.stringify({
    apiVersion: "admission.k8s.io/v1",
    kind: "AdmissionReview",
    request: {
      uid: "705ab4f5-6393-11e8-b7cc-42010a800002",
      kind: { group: "", version: "v1", kind: "Pod" },
      resource: { group: "", version: "v1", resource: "pods" },
      requestKind: { group: "", version: "v1", kind: "Pod" },
      requestResource: { group: "", version: "v1", resource: "pods" },
      namespace: "team-a",
      operation: "CREATE",
      userInfo: {
        username: "system:serviceaccount:kube-system:replicaset-controller",
        uid: "0b5e2f3c-1c1e-4d0f-9b53-0f5f1f0c9a11",
        groups: ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
      },
      object: {
        apiVersion: "v1",
        kind: "Pod",
        metadata: {
          generateName: "reviewer-7d9c5b8f6-",
          namespace: "team-a",
          labels: {
            app: "reviewer",
            "custody.dev/agent-task": "review-42",
            "pod-template-hash": "7d9c5b8f6",
          },
          ownerReferences: [
            {
              apiVersion: "apps/v1",
              kind: "ReplicaSet",
              name: "reviewer-7d9c5b8f6",
              uid: "1f2e3d4c-5b6a-7980-1a2b-3c4d5e6f7a8b",
              controller: true,
              blockOwnerDeletion: true,
            },
          ],
        },
        spec: {
          serviceAccountName: "reviewer",
          containers: [container(0), container(1)],
          volumes: [{ name: "data", emptyDir: {} }],
        },
      },
      oldObject: null,
      dryRun: false,
      options: { apiVersion: "meta.k8s.io/v1", kind: "CreateOptions" },
    },
  });
}

type Send = () => Promise<void>;

function h2Sender(port: number, ca: string, body: Buffer): { send: Send; close(): void } {
  const session = http2.connect(`https://127.0.0.1:${port}`, { ca });
  const send: Send = () =>
    new Promise((resolve, reject) => {
      const req = session.request({
        ":method": "POST",
        ":path": `${PATH}?timeout=5s`,
        "content-type": "application/json",
        "content-length": body.length,
      });
      let status = 0;
      req.on("response", (h) => {
        status = Number(h[":status"]);
      });
      req.on("data", () => {});
      req.on("end", () => (status === 200 ? resolve() : reject(new Error(`status ${status}`))));
      req.on("error", reject);
      req.end(body);
    });
  return { send, close: () => session.close() };
}

function h1Sender(port: number, ca: string, body: Buffer): { send: Send; close(): void } {
  const agent = new https.Agent({ keepAlive: true, maxSockets: 32, ca });
  const send: Send = () =>
    new Promise((resolve, reject) => {
      const req = https.request(
        {
          host: "127.0.0.1",
          port,
          path: `${PATH}?timeout=5s`,
          method: "POST",
          agent,
          headers: { "content-type": "application/json", "content-length": body.length },
        },
        (res) => {
          res.on("data", () => {});
          res.on("end", () =>
            res.statusCode === 200 ? resolve() : reject(new Error(`status ${res.statusCode}`)),
          );
        },
      );
      req.on("error", reject);
      req.end(body);
    });
  return { send, close: () => agent.destroy() };
}

const quantile = (sorted: number[], q: number) =>
  sorted.length === 0 ? Number.NaN : sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;

async function run(send: Send, total: number, concurrency: number) {
  const latencies: number[] = [];
  let next = 0;
  const started = performance.now();
  const lane = async () => {
    while (next < total) {
      next++;
      const t = performance.now();
      await send();
      latencies.push(performance.now() - t);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, lane));
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  return { rps: total / seconds, p50: quantile(latencies, 0.5), p99: quantile(latencies, 0.99) };
}

export interface AdmissionBenchResult {
  protocol: "h2" | "http/1.1";
  concurrency: number;
  requests: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  serverP50Ms: number;
  serverP99Ms: number;
}

/** Runs the benchmark and prints one line per case; returns the numbers. */
export async function benchAdmissionServer(requests = 3000): Promise<AdmissionBenchResult[]> {
  const now = Date.now();
  const { ca } = generateCa({
    trustDomain: "custody.local",
    now: new Date(now - 60_000),
    validityMs: 3_600_000,
    serial: serialFromRandom(randomBytes(16)),
  });
  const keys = generateLeafKeyPair();
  const cert = mintServingCert({
    ca,
    subjectPublicKey: keys.publicKeySpki,
    dnsNames: ["custody-webhook.custody-system.svc"],
    ipAddresses: ["127.0.0.1"],
    serial: serialFromRandom(randomBytes(16)),
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 1_800_000),
  });
  const worker = new Worker(new URL(import.meta.url), {
    workerData: {
      role: "admission-bench-server",
      certPem: cert.chainPem,
      keyPem: keys.privateKeyPem,
    } satisfies ServerWorkerData,
  });
  const nextMessage = <T>() => new Promise<T>((resolve) => worker.once("message", resolve));
  const { port } = await nextMessage<{ port: number }>();
  const body = Buffer.from(samplePodReview());
  const results: AdmissionBenchResult[] = [];
  console.log(
    `admission server alone: node ${process.version}, trivial handler, ${body.length}-byte pod AdmissionReview, ${requests} requests per case`,
  );
  try {
    for (const protocol of ["h2", "http/1.1"] as const) {
      for (const concurrency of [1, 32]) {
        const client =
          protocol === "h2" ? h2Sender(port, ca.certPem, body) : h1Sender(port, ca.certPem, body);
        try {
          await run(client.send, 300, concurrency); // warm-up: JIT, connections, TLS sessions
          worker.postMessage("take");
          await nextMessage();
          const r = await run(client.send, requests, concurrency);
          worker.postMessage("take");
          const { durations } = await nextMessage<{ durations: number[] }>();
          durations.sort((a, b) => a - b);
          const result: AdmissionBenchResult = {
            protocol,
            concurrency,
            requests,
            rps: r.rps,
            p50Ms: r.p50,
            p99Ms: r.p99,
            serverP50Ms: quantile(durations, 0.5),
            serverP99Ms: quantile(durations, 0.99),
          };
          results.push(result);
          console.log(
            `${protocol.padEnd(8)} ${String(concurrency).padStart(2)} in flight  ${Math.round(r.rps).toLocaleString("en-US").padStart(6)} req/s` +
              `  round trip p50 ${r.p50.toFixed(2)} ms p99 ${r.p99.toFixed(2)} ms` +
              `  in server p50 ${result.serverP50Ms.toFixed(3)} ms p99 ${result.serverP99Ms.toFixed(3)} ms`,
          );
        } finally {
          client.close();
        }
      }
    }
  } finally {
    worker.postMessage("close");
    await nextMessage();
    await worker.terminate();
  }
  return results;
}

if (!isMainThread && (workerData as ServerWorkerData | undefined)?.role === "admission-bench-server") {
  await runServerWorker(workerData as ServerWorkerData);
} else if (import.meta.main) {
  await benchAdmissionServer(Number(process.argv[2] ?? 3000));
}
