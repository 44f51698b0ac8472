// A small HTTP/2 client for the Kubernetes API's hot path (status writes,
// Secret writes, Events). One multiplexed TLS connection, like client-go:
// the apiserver is the bottleneck, so the client must not add per-request
// TLS handshakes or heavy serialisation. Credentials come from
// credentials.ts (client certificate, bearer token, in-cluster token file).
import http2, { type ClientHttp2Session } from "node:http2";
import type { ClusterCredentials } from "./credentials.ts";
import type { ListPage, ListRequest, ListWatch, WatchEvent, WatchHandle, WatchRequest } from "./informer.ts";

export class KubeApiError extends Error {
  readonly code: number;
  readonly reason: string;
  readonly body: unknown;
  constructor(code: number, reason: string, message: string, body: unknown) {
    super(message);
    this.name = "KubeApiError";
    this.code = code;
    this.reason = reason;
    this.body = body;
  }
}

export const isNotFound = (e: unknown): boolean => e instanceof KubeApiError && e.code === 404;
export const isConflict = (e: unknown): boolean => e instanceof KubeApiError && e.code === 409;
export const isAlreadyExists = (e: unknown): boolean =>
  e instanceof KubeApiError && e.code === 409 && e.reason === "AlreadyExists";
/** A create refused because its namespace is being deleted (the API server's NamespaceTerminating cause). */
export const isNamespaceTerminating = (e: unknown): boolean =>
  e instanceof KubeApiError &&
  e.code === 403 &&
  ((e.body as { details?: { causes?: Array<{ reason?: string }> } } | undefined)?.details?.causes ?? []).some(
    (c) => c.reason === "NamespaceTerminating",
  );

export type PatchType = "merge" | "json" | "strategic" | "apply";
const PATCH_CONTENT_TYPES: Record<PatchType, string> = {
  merge: "application/merge-patch+json",
  json: "application/json-patch+json",
  strategic: "application/strategic-merge-patch+json",
  apply: "application/apply-patch+yaml",
};

export interface RequestOptions {
  /** Content type of the body (JSON by default; patches set theirs). */
  readonly contentType?: string;
  readonly accept?: string;
  /**
   * Resolve with undefined on success without reading the body into a
   * string or parsing it: for writes whose response the caller never reads.
   * A Secret's response echoes its data (a private key): not kept either.
   */
  readonly discardResponse?: boolean;
}

export class KubeRest {
  readonly #creds: ClusterCredentials;
  readonly #authority: string;
  /**
   * A few HTTP/2 connections, used round-robin: the API server handles one
   * connection's frames on one reader, and at high write rates four
   * connections measured ~25 % more writes/s than one.
   */
  readonly #sessions: Array<ClientHttp2Session | undefined>;
  #next = 0;
  readonly #timeoutMs: number;

  constructor(
    creds: ClusterCredentials,
    { timeoutMs = 30_000, connections = 4 }: { timeoutMs?: number; connections?: number } = {},
  ) {
    this.#creds = creds;
    this.#authority = new URL(creds.server).origin;
    this.#timeoutMs = timeoutMs;
    this.#sessions = new Array(Math.max(1, connections)).fill(undefined);
  }

  get server(): string {
    return this.#authority;
  }

  #headers(): Record<string, string> {
    const token = this.#creds.token();
    return token ? { authorization: `Bearer ${token}` } : {};
  }

  #connect(): ClientHttp2Session {
    const slot = this.#next;
    this.#next = (this.#next + 1) % this.#sessions.length;
    const s = this.#sessions[slot];
    if (s && !s.closed && !s.destroyed) return s;
    const c = this.#creds;
    const session = http2.connect(this.#authority, {
      ...(c.ca ? { ca: c.ca } : {}),
      ...(c.cert ? { cert: c.cert } : {}),
      ...(c.key ? { key: c.key } : {}),
      rejectUnauthorized: !c.insecureSkipTlsVerify,
    });
    const drop = () => {
      if (this.#sessions[slot] === session) this.#sessions[slot] = undefined;
    };
    session.on("error", drop);
    session.on("goaway", drop);
    session.on("close", drop);
    this.#sessions[slot] = session;
    return session;
  }

  close(): void {
    for (let i = 0; i < this.#sessions.length; i++) {
      this.#sessions[i]?.close();
      this.#sessions[i] = undefined;
    }
  }

  async request<T = unknown>(
    method: string,
    path: string,
    body?: unknown,
    opts: RequestOptions = {},
  ): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.#once<T>(method, path, body, opts);
      } catch (err) {
        // A connection that died between requests (GOAWAY, reset) is retried
        // once on a fresh session; API errors are the caller's to handle.
        if (err instanceof KubeApiError || attempt >= 1) throw err;
      }
    }
  }

  #once<T>(method: string, path: string, body: unknown, opts: RequestOptions): Promise<T> {
    const session = this.#connect();
    const payload = body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body);
    return new Promise<T>((resolve, reject) => {
      const headers: http2.OutgoingHttpHeaders = {
        ":method": method,
        ":path": path,
        accept: opts.accept ?? "application/json",
        ...this.#headers(),
      };
      if (payload !== undefined) headers["content-type"] = opts.contentType ?? "application/json";
      const req = session.request(headers, { endStream: payload === undefined });
      req.setTimeout(this.#timeoutMs, () => req.close(http2.constants.NGHTTP2_CANCEL));
      let status = 0;
      const chunks: Buffer[] = [];
      // A discarded success body is not kept (an error's is, for its message).
      const discarding = () => opts.discardResponse === true && status >= 200 && status < 300;
      req.on("response", (h) => {
        status = Number(h[":status"] ?? 0);
      });
      req.on("data", (c: Buffer) => {
        if (!discarding()) chunks.push(c);
      });
      req.on("error", reject);
      req.on("close", () => {
        if (status === 0) {
          reject(new Error(`${method} ${path}: stream closed without a response`));
          return;
        }
        if (discarding()) {
          resolve(undefined as T);
          return;
        }
        const text = Buffer.concat(chunks).toString("utf8");
        let parsed: unknown = text;
        try {
          parsed = text.length > 0 ? JSON.parse(text) : undefined;
        } catch {
          // non-JSON bodies (e.g. /readyz) stay text
        }
        if (status >= 200 && status < 300) {
          resolve(parsed as T);
          return;
        }
        const st = (parsed ?? {}) as { reason?: string; message?: string };
        reject(
          new KubeApiError(
            status,
            st.reason ?? "Unknown",
            `${method} ${path}: ${status} ${st.reason ?? ""} ${st.message ?? text.slice(0, 300)}`.trim(),
            parsed,
          ),
        );
      });
      if (payload !== undefined) req.end(payload);
    });
  }

  /**
   * A watch stream (newline-delimited JSON events) on the shared HTTP/2
   * connection. `onDone` is called once: without an error when the server
   * ended the stream, with one (carrying `statusCode`) otherwise.
   */
  watch(
    path: string,
    onEvent: (event: { type: string; object: unknown }) => void,
    onDone: (err?: unknown) => void,
    accept = "application/json",
  ): { abort(): void } {
    let finished = false;
    const finish = (err?: unknown) => {
      if (finished) return;
      finished = true;
      onDone(err);
    };
    let req: http2.ClientHttp2Stream;
    try {
      req = this.#connect().request({
        ":method": "GET",
        ":path": path,
        accept,
        ...this.#headers(),
      });
    } catch (err) {
      queueMicrotask(() => finish(err));
      return { abort() {} };
    }
    let status = 0;
    let buffered = "";
    let errorBody = "";
    req.setEncoding("utf8");
    req.on("response", (h) => {
      status = Number(h[":status"] ?? 0);
    });
    req.on("data", (chunk: string) => {
      if (status !== 200) {
        errorBody += chunk;
        return;
      }
      buffered += chunk;
      let nl = buffered.indexOf("\n");
      while (nl >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (line.trim()) {
          try {
            onEvent(JSON.parse(line) as { type: string; object: unknown });
          } catch (err) {
            finish(err);
            req.close(http2.constants.NGHTTP2_CANCEL);
            return;
          }
        }
        nl = buffered.indexOf("\n");
      }
    });
    req.on("error", (err) => finish(err));
    req.on("close", () => {
      if (status === 200 || status === 0) {
        finish(status === 0 ? new Error(`watch ${path}: stream closed without a response`) : undefined);
        return;
      }
      let message = errorBody.slice(0, 300);
      try {
        message = String((JSON.parse(errorBody) as { message?: unknown }).message ?? message);
      } catch {
        // not a Status object
      }
      finish(Object.assign(new Error(`watch ${path}: ${status} ${message}`), { statusCode: status }));
    });
    return {
      abort() {
        finished = true;
        req.close(http2.constants.NGHTTP2_CANCEL);
      },
    };
  }

  get<T = unknown>(path: string, accept?: string): Promise<T> {
    return this.request<T>("GET", path, undefined, { accept });
  }
  post<T = unknown>(path: string, body: unknown, opts?: Pick<RequestOptions, "discardResponse">): Promise<T> {
    return this.request<T>("POST", path, body, opts);
  }
  put<T = unknown>(path: string, body: unknown, opts?: Pick<RequestOptions, "discardResponse">): Promise<T> {
    return this.request<T>("PUT", path, body, opts);
  }
  patch<T = unknown>(
    path: string,
    body: unknown,
    type: PatchType = "merge",
    opts?: Pick<RequestOptions, "discardResponse">,
  ): Promise<T> {
    return this.request<T>("PATCH", path, body, { ...opts, contentType: PATCH_CONTENT_TYPES[type] });
  }
  delete<T = unknown>(path: string, body?: unknown): Promise<T> {
    return this.request<T>("DELETE", path, body);
  }
}

/**
 * What a metadata-only list or watch asks for: the API server answers with
 * PartialObjectMetadata (metadata only, whatever the kind), as client-go's
 * metadata informers do.
 */
const METADATA_ONLY = {
  list: "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
  watch: "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
} as const;

/**
 * The Informer's ListWatch over KubeRest: paged lists and watches as raw
 * JSON. With `metadataOnly`, objects come as PartialObjectMetadata: for
 * Secrets, the operator then never receives their data (private keys) and
 * parses a tenth of the bytes.
 */
export function restListWatch(
  rest: KubeRest,
  collectionPath: string,
  pageSize = 500,
  { metadataOnly = false }: { metadataOnly?: boolean } = {},
): ListWatch {
  const query = (params: Record<string, string | number | boolean | undefined>) => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== "") q.set(k, String(v));
    return q.toString();
  };
  return {
    async *list(req: ListRequest): AsyncIterable<ListPage> {
      let cont: string | undefined;
      do {
        if (req.signal.aborted) throw new Error(`list ${collectionPath}: aborted`);
        const page = await rest.get<{
          items?: unknown[];
          metadata?: { resourceVersion?: string; continue?: string };
        }>(
          `${collectionPath}?${query({ limit: pageSize, continue: cont, labelSelector: req.labelSelector, fieldSelector: req.fieldSelector })}`,
          metadataOnly ? METADATA_ONLY.list : undefined,
        );
        cont = page.metadata?.continue || undefined;
        yield { items: page.items ?? [], resourceVersion: page.metadata?.resourceVersion ?? "" };
      } while (cont);
    },
    async watch(
      req: WatchRequest,
      onEvent: (e: WatchEvent) => void,
      onDone: (err?: unknown) => void,
    ): Promise<WatchHandle> {
      const path = `${collectionPath}?${query({
        watch: 1,
        resourceVersion: req.resourceVersion,
        allowWatchBookmarks: req.allowWatchBookmarks,
        timeoutSeconds: req.timeoutSeconds,
        labelSelector: req.labelSelector,
        fieldSelector: req.fieldSelector,
      })}`;
      return rest.watch(path, onEvent, onDone, metadataOnly ? METADATA_ONLY.watch : undefined);
    },
  };
}
