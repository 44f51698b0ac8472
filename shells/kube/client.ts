// Binding to @kubernetes/client-node 2.x: kubeconfig loading, API clients,
// and the thin ListWatch adapter the Informer runs on.
//
// The adapter talks to the resource's collection path directly (raw JSON, no
// model deserialization) so list items and watch objects have the same shape,
// and so one code path serves core and custom resources alike.

import {
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  HttpMethod,
  IsomorphicFetchHttpLibrary,
  KubeConfig,
  KubernetesObjectApi,
  RequestContext,
  Watch,
} from "@kubernetes/client-node";
import type { ListPage, ListRequest, ListWatch, WatchEvent, WatchHandle, WatchRequest } from "./informer.ts";

export interface LoadKubeConfigOptions {
  /** Path to a kubeconfig file; overrides KUBECONFIG. */
  kubeconfig?: string;
  /** Kubeconfig context to use instead of the file's current-context. */
  context?: string;
}

/**
 * Loads credentials the way kubectl does: an explicit file, else $KUBECONFIG,
 * else ~/.kube/config, else the in-cluster service account.
 */
export function loadKubeConfig(options: LoadKubeConfigOptions = {}): KubeConfig {
  const kc = new KubeConfig();
  if (options.kubeconfig !== undefined) kc.loadFromFile(options.kubeconfig);
  else kc.loadFromDefault();
  if (options.context !== undefined) {
    if (kc.getContextObject(options.context) === null) {
      throw new Error(`kubeconfig context: "${options.context}" does not exist in the loaded kubeconfig`);
    }
    kc.setCurrentContext(options.context);
  }
  const cluster = kc.getCurrentCluster();
  if (cluster === null || !cluster.server) {
    throw new Error(
      "kubeconfig: no current cluster with a server URL (set KUBECONFIG, create ~/.kube/config, or run in a pod)",
    );
  }
  return kc;
}

export interface KubeClients {
  kubeConfig: KubeConfig;
  core: CoreV1Api;
  customObjects: CustomObjectsApi;
  coordination: CoordinationV1Api;
  objects: KubernetesObjectApi;
}

export function createKubeClients(kc: KubeConfig): KubeClients {
  return {
    kubeConfig: kc,
    core: kc.makeApiClient(CoreV1Api),
    customObjects: kc.makeApiClient(CustomObjectsApi),
    coordination: kc.makeApiClient(CoordinationV1Api),
    objects: KubernetesObjectApi.makeApiClient(kc),
  };
}

/** Which collection to list/watch. `group` "" is the core group (/api/v1). */
export interface ResourceRef {
  group: string;
  version: string;
  /** Plural resource name, e.g. "agenttasks", "pods". */
  plural: string;
  /** Watch one namespace; omit for all namespaces (or cluster-scoped resources). */
  namespace?: string;
}

export function collectionPath(ref: ResourceRef): string {
  const root = ref.group === "" ? `/api/${ref.version}` : `/apis/${ref.group}/${ref.version}`;
  const ns = ref.namespace !== undefined ? `/namespaces/${encodeURIComponent(ref.namespace)}` : "";
  return `${root}${ns}/${ref.plural}`;
}

export interface KubeListWatchOptions {
  /** Items per list page; bounds the memory a relist needs beyond the cache. Default 500. */
  pageSize?: number;
  /**
   * client-node's Watch aborts a stream after this long without bytes. The
   * Informer's own watchdog is the authority, so keep this longer than it.
   * Default 6 min.
   */
  watchInactivityTimeoutMs?: number;
}

class KubeHttpError extends Error {
  readonly statusCode: number;
  constructor(statusCode: number, message: string) {
    super(message);
    this.name = "KubeHttpError";
    this.statusCode = statusCode;
  }
}

export function kubeListWatch(
  kc: KubeConfig,
  ref: ResourceRef,
  options: KubeListWatchOptions = {},
): ListWatch {
  const path = collectionPath(ref);
  const pageSize = options.pageSize ?? 500;
  const http = new IsomorphicFetchHttpLibrary();
  const watcher = new Watch(kc);
  // requestTimeoutMs is TypeScript-private but a plain instance field in 2.0.1
  // (default 30 s); at 30 s a quiet watch between bookmarks would be torn down.
  (watcher as unknown as { requestTimeoutMs: number }).requestTimeoutMs =
    options.watchInactivityTimeoutMs ?? 6 * 60_000;

  async function getJson(url: URL, signal: AbortSignal): Promise<unknown> {
    const ctx = new RequestContext(url.toString(), HttpMethod.GET);
    ctx.setHeaderParam("Accept", "application/json");
    ctx.setSignal(signal);
    await kc.applySecurityAuthentication(ctx);
    const res = await http.send(ctx).toPromise();
    const text = await res.body.text();
    if (res.httpStatusCode < 200 || res.httpStatusCode > 299) {
      let message = text.slice(0, 500);
      try {
        message = String((JSON.parse(text) as { message?: unknown }).message ?? message);
      } catch {
        // not a Status object; keep the raw text
      }
      throw new KubeHttpError(
        res.httpStatusCode,
        `GET ${url.pathname}: HTTP ${res.httpStatusCode}: ${message}`,
      );
    }
    return JSON.parse(text);
  }

  return {
    async *list(req: ListRequest): AsyncIterable<ListPage> {
      const server = kc.getCurrentCluster()?.server;
      if (!server) throw new Error("kubeconfig: no current cluster");
      let cont: string | undefined;
      do {
        const url = new URL(server + path);
        url.searchParams.set("limit", String(pageSize));
        if (cont !== undefined) url.searchParams.set("continue", cont);
        if (req.labelSelector !== undefined) url.searchParams.set("labelSelector", req.labelSelector);
        if (req.fieldSelector !== undefined) url.searchParams.set("fieldSelector", req.fieldSelector);
        const body = (await getJson(url, req.signal)) as {
          items?: unknown[] | null;
          metadata?: { resourceVersion?: string; continue?: string };
        };
        yield { items: body.items ?? [], resourceVersion: body.metadata?.resourceVersion ?? "" };
        cont = body.metadata?.continue || undefined;
      } while (cont !== undefined);
    },

    async watch(
      req: WatchRequest,
      onEvent: (event: WatchEvent) => void,
      onDone: (err?: unknown) => void,
    ): Promise<WatchHandle> {
      const query: Record<string, string | number | boolean | undefined> = {
        resourceVersion: req.resourceVersion,
        allowWatchBookmarks: req.allowWatchBookmarks,
        timeoutSeconds: req.timeoutSeconds,
        labelSelector: req.labelSelector,
        fieldSelector: req.fieldSelector,
      };
      const controller = await watcher.watch(
        path,
        query,
        (type, object) => onEvent({ type, object }),
        (err) => onDone(err ?? undefined),
      );
      return { abort: () => controller.abort() };
    },
  };
}
