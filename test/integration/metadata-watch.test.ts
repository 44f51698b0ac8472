// The operator caches credential Secrets through a metadata-only list and
// watch (PartialObjectMetadata): against the real API server, what reaches
// the informer has the labels, annotations and ownerReferences it keeps, and
// never the Secret's data (its private key). The same list asked for whole
// objects does carry the data, so the test would see it if it leaked. Writes
// whose response nobody reads (a Secret's echoes its key) can discard it.
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, expect, inject, it } from "vitest";
import { loadClusterCredentials } from "../../shells/kube/credentials.ts";
import { Informer } from "../../shells/kube/informer.ts";
import { KubeApiError, KubeRest, restListWatch } from "../../shells/kube/rest.ts";
import { eventually } from "../support/eventually.ts";

const env = inject("localEnv");
const ns = `metawatch-${randomUUID().slice(0, 8)}`;
let rest: KubeRest;

const KEY = "-----BEGIN PRIVATE KEY-----\nnot-a-real-key\n-----END PRIVATE KEY-----\n";
/** The owner must exist, or the controller manager's garbage collector deletes the Secrets. */
let ownerUid = "";
const secret = (name: string) => ({
  apiVersion: "v1",
  kind: "Secret",
  metadata: {
    name,
    labels: { "custody.dev/agent-task": name },
    annotations: { "custody.dev/serial": "0a1b" },
    ownerReferences: [
      { apiVersion: "v1", kind: "ConfigMap", name: "owner", uid: ownerUid, controller: true },
    ],
  },
  type: "kubernetes.io/tls",
  stringData: { "tls.key": KEY, "tls.crt": "crt" },
});

beforeAll(async () => {
  rest = new KubeRest(loadClusterCredentials({ kubeconfig: env.kubeconfig }), { connections: 1 });
  await rest.post("/api/v1/namespaces", { metadata: { name: ns } });
  const owner = await rest.post<{ metadata: { uid: string } }>(`/api/v1/namespaces/${ns}/configmaps`, {
    metadata: { name: "owner" },
  });
  ownerUid = owner.metadata.uid;
  await rest.post(`/api/v1/namespaces/${ns}/secrets`, secret("listed"));
});
afterAll(async () => {
  await rest.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  rest.close();
});

it("lists and watches Secrets as metadata only: labels, annotations and owners, no data", async () => {
  const path = `/api/v1/namespaces/${ns}/secrets`;
  type Seen = Record<string, unknown> & { metadata: { name: string } };
  const seen: Array<{ event: string; obj: Seen }> = [];
  const informer = new Informer<Seen>({
    name: "metadata-only-secrets",
    listWatch: restListWatch(rest, path, 500, { metadataOnly: true }),
  });
  informer.onAdd((obj) => seen.push({ event: "add", obj }));
  informer.onUpdate((_old, obj) => seen.push({ event: "update", obj }));
  informer.start();
  try {
    await informer.waitForSync();
    // One from the list, one from the watch.
    await rest.post(path, secret("watched"));
    await eventually(() => expect(seen.map((s) => s.obj.metadata.name)).toContain("watched"));
    for (const name of ["listed", "watched"]) {
      const obj = seen.find((s) => s.obj.metadata.name === name)!.obj as {
        kind?: string;
        data?: unknown;
        stringData?: unknown;
        metadata: {
          labels?: Record<string, string>;
          annotations?: Record<string, string>;
          ownerReferences?: Array<{ kind: string; controller?: boolean }>;
        };
      };
      expect(obj.kind).toBe("PartialObjectMetadata");
      expect(obj.data).toBeUndefined();
      expect(obj.stringData).toBeUndefined();
      expect(JSON.stringify(obj)).not.toContain("PRIVATE KEY");
      expect(obj.metadata.labels).toEqual({ "custody.dev/agent-task": name });
      expect(obj.metadata.annotations).toEqual({ "custody.dev/serial": "0a1b" });
      expect(obj.metadata.ownerReferences?.[0]).toMatchObject({ kind: "ConfigMap", controller: true });
    }
  } finally {
    await informer.stop();
  }
  // Asked for whole objects, the same list carries the key: what the metadata-only one left out.
  const whole = await rest.get<{ items: Array<{ data?: Record<string, string> }> }>(path);
  expect(whole.items.some((s) => Buffer.from(s.data?.["tls.key"] ?? "", "base64").toString() === KEY)).toBe(
    true,
  );
});

it("a write can discard its response (a Secret's echoes the key); a refused one still says why", async () => {
  const path = `/api/v1/namespaces/${ns}/secrets`;
  expect(await rest.post(path, secret("discarded"), { discardResponse: true })).toBeUndefined();
  const stored = await rest.get<{ data?: Record<string, string> }>(`${path}/discarded`);
  expect(Buffer.from(stored.data?.["tls.key"] ?? "", "base64").toString()).toBe(KEY);
  const refused = await rest.post(path, secret("discarded"), { discardResponse: true }).then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(refused).toBeInstanceOf(KubeApiError);
  expect((refused as KubeApiError).reason).toBe("AlreadyExists");
  expect((refused as Error).message).toContain('"discarded" already exists');
});
