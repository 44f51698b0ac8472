// A small HTTP/2 client for the Kubernetes API's hot path (status writes,
// Secret writes, Events). One multiplexed TLS connection, like client-go:
// the apiserver is the bottleneck, so the client must not add per-request
// TLS handshakes or heavy serialisation. Credentials come from the
// KubeConfig (client certificate, bearer token, in-cluster token file).
import http2, { type ClientHttp2Session } from "node:http2";
import type { KubeConfig } from "@kubernetes/client-node";

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

export type PatchType = "merge" | "json" | "strategic" | "apply";
const PATCH_CONTENT_TYPES: Record<PatchType, string> = {
  merge: "application/merge-patch+json",
  json: "application/json-patch+json",
  strategic: "application/strategic-merge-patch+json",
  apply: "application/apply-patch+yaml",
};

interface Credentials {
  authority: string;
  tls: { ca?: string | Buffer; cert?: string | Buffer; key?: string | Buffer; rejectUnauthorized?: boolean };
  headers: Record<string, string>;
  fetchedAt: number;
}

/** Tokens from files (in-cluster) rotate; re-read credentials this often. */
const CREDENTIAL_REFRESH_MS = 60_000;

export class KubeRest {
  readonly #kc: KubeConfig;
  #session: ClientHttp2Session | undefined;
  #creds: Credentials | undefined;
  readonly #timeoutMs: number;

  constructor(kc: KubeConfig, { timeoutMs = 30_000 }: { timeoutMs?: number } = {}) {
    this.#kc = kc;
    this.#timeoutMs = timeoutMs;
  }

  async #credentials(): Promise<Credentials> {
    if (this.#creds && Date.now() - this.#creds.fetchedAt < CREDENTIAL_REFRESH_MS) return this.#creds;
    const cluster = this.#kc.getCurrentCluster();
    if (!cluster) throw new Error("kubeconfig has no current cluster");
    const opts: {
      ca?: string | Buffer;
      cert?: string | Buffer;
      key?: string | Buffer;
      headers?: Record<string, string>;
      rejectUnauthorized?: boolean;
    } = {};
    await this.#kc.applyToHTTPSOptions(opts as never);
    const url = new URL(cluster.server);
    const tls: Credentials["tls"] = {};
    if (opts.ca) tls.ca = opts.ca;
    if (opts.cert) tls.cert = opts.cert;
    if (opts.key) tls.key = opts.key;
    if (opts.rejectUnauthorized === false) tls.rejectUnauthorized = false;
    const previous = this.#creds;
    this.#creds = { authority: url.origin, tls, headers: { ...(opts.headers ?? {}) }, fetchedAt: Date.now() };
    // A changed client certificate needs a new connection; a changed token does not.
    if (previous && (previous.tls.cert !== tls.cert || previous.tls.key !== tls.key)) this.close();
    return this.#creds;
  }

  #connect(creds: Credentials): ClientHttp2Session {
    const s = this.#session;
    if (s && !s.closed && !s.destroyed) return s;
    const session = http2.connect(creds.authority, { ...creds.tls, servername: undefined });
    session.on("error", () => {
      if (this.#session === session) this.#session = undefined;
    });
    session.on("goaway", () => {
      if (this.#session === session) this.#session = undefined;
    });
    session.on("close", () => {
      if (this.#session === session) this.#session = undefined;
    });
    this.#session = session;
    return session;
  }

  close(): void {
    this.#session?.close();
    this.#session = undefined;
  }

  async request<T = unknown>(
    method: string,
    path: string,
    body?: unknown,
    contentType = "application/json",
  ): Promise<T> {
    const creds = await this.#credentials();
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.#once<T>(creds, method, path, body, contentType);
      } catch (err) {
        // A connection that died between requests (GOAWAY, reset) is retried
        // once on a fresh session; API errors are the caller's to handle.
        if (err instanceof KubeApiError || attempt >= 1) throw err;
        this.#session?.destroy();
        this.#session = undefined;
      }
    }
  }

  #once<T>(creds: Credentials, method: string, path: string, body: unknown, contentType: string): Promise<T> {
    const session = this.#connect(creds);
    const payload = body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body);
    return new Promise<T>((resolve, reject) => {
      const headers: http2.OutgoingHttpHeaders = {
        ":method": method,
        ":path": path,
        accept: "application/json",
        ...creds.headers,
      };
      if (payload !== undefined) headers["content-type"] = contentType;
      const req = session.request(headers, { endStream: payload === undefined });
      req.setTimeout(this.#timeoutMs, () => req.close(http2.constants.NGHTTP2_CANCEL));
      let status = 0;
      const chunks: Buffer[] = [];
      req.on("response", (h) => {
        status = Number(h[":status"] ?? 0);
      });
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("error", reject);
      req.on("close", () => {
        if (status === 0) {
          reject(new Error(`${method} ${path}: stream closed without a response`));
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

  get<T = unknown>(path: string): Promise<T> {
    return this.request<T>("GET", path);
  }
  post<T = unknown>(path: string, body: unknown): Promise<T> {
    return this.request<T>("POST", path, body);
  }
  put<T = unknown>(path: string, body: unknown): Promise<T> {
    return this.request<T>("PUT", path, body);
  }
  patch<T = unknown>(path: string, body: unknown, type: PatchType = "merge"): Promise<T> {
    return this.request<T>("PATCH", path, body, PATCH_CONTENT_TYPES[type]);
  }
  delete<T = unknown>(path: string, body?: unknown): Promise<T> {
    return this.request<T>("DELETE", path, body);
  }
}
