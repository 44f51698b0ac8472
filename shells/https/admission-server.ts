// The HTTPS endpoint the kube-apiserver calls for admission. It parses an
// AdmissionReview (admission.k8s.io/v1), calls the handler registered for the
// path, and writes the AdmissionReview response. No admission rule lives
// here: handlers (webhook/*.ts) decide, this shell only speaks the protocol.
//
// Every opted-in pod creation waits on this server, so the hot path is kept
// short: one body buffer, one JSON.parse, one zod check of the envelope (the
// object itself is passed through untouched), one JSON.stringify.
//
// HTTP/2 with HTTP/1.1 fallback: the apiserver's Go client negotiates h2 via
// ALPN and multiplexes every admission call over one connection (no
// per-request handshakes); anything else (curl, probes) may speak HTTP/1.1.
//
// Request bodies are never logged: an AdmissionReview carries whole objects,
// Secrets and signed assertions included.
import http2, {
  type Http2SecureServer,
  type Http2ServerRequest,
  type Http2ServerResponse,
  type Http2Session,
} from "node:http2";
import type { AddressInfo } from "node:net";
import { performance } from "node:perf_hooks";
import tls, { type TLSSocket } from "node:tls";
import { z } from "zod";
import type {
  AdmissionHandler,
  AdmissionRequest,
  AdmissionResult,
  JsonPatchOperation,
} from "../../webhook/admission.ts";
import type { Logger } from "../log.ts";

export const ADMISSION_API_VERSION = "admission.k8s.io/v1";
/** The apiserver's own limit for an admission request is 3 MiB; anything larger is not from it. */
export const DEFAULT_MAX_BODY_BYTES = 3 * 1024 * 1024;

export interface AdmissionServerOptions {
  host: string;
  /** 0 picks a free port (see the returned `port`). */
  port: number;
  /** Exact request path (query ignored) → handler, e.g. "/admit/pods". */
  routes: Record<string, AdmissionHandler>;
  /** PEM: the certificate chain (leaf first) and its private key. */
  tls: { certPem: string; keyPem: string };
  log: Logger;
  /**
   * Called once per AdmissionReview answered on a configured route (handler
   * decisions and fail-closed handler errors), after the response is written.
   * Malformed requests are not observed (they are not admission decisions).
   */
  observe?: (path: string, durationMs: number, allowed: boolean) => void;
  maxBodyBytes?: number;
  /** How long close() lets in-flight requests finish before cutting connections. Default 5 s. */
  closeGraceMs?: number;
}

export interface AdmissionServer {
  readonly port: number;
  /**
   * Replaces the serving certificate for new TLS connections (established
   * ones keep the certificate they negotiated). Throws, keeping the current
   * certificate, if the PEMs are unreadable or the key does not match.
   */
  setCertificate(certPem: string, keyPem: string): void;
  /** Stops accepting, lets in-flight requests finish (up to closeGraceMs), then closes every connection. */
  close(): Promise<void>;
}

const gvk = z.object({ group: z.string(), version: z.string(), kind: z.string() });
const gvr = z.object({ group: z.string(), version: z.string(), resource: z.string() });
// The envelope only: object and oldObject stay unknown (handlers parse what they need).
const admissionRequestSchema = z.object({
  uid: z.string().min(1),
  kind: gvk,
  resource: gvr,
  subResource: z.string().optional(),
  namespace: z.string().optional(),
  name: z.string().optional(),
  operation: z.enum(["CREATE", "UPDATE", "DELETE", "CONNECT"]),
  userInfo: z.object({
    username: z.string().optional(),
    uid: z.string().optional(),
    groups: z.array(z.string()).optional(),
    extra: z.record(z.string(), z.array(z.string())).optional(),
  }),
  object: z.unknown(),
  oldObject: z.unknown(),
  dryRun: z.boolean().optional(),
});
const reviewSchema = z.object({
  apiVersion: z.string(),
  kind: z.string(),
  request: admissionRequestSchema,
});

const TLS_BASE: tls.SecureContextOptions = { minVersion: "TLSv1.2" };
const JSON_HEADERS = "application/json";

class BadRequest extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

/** One short line for a handler error shown to the API client: no stack, bounded length. */
function shortError(err: unknown): string {
  const raw = err instanceof Error ? err.message : String(err);
  const line = raw.split("\n", 1)[0] ?? "";
  return line.length > 200 ? `${line.slice(0, 197)}...` : line || "unknown error";
}

/** A client-supplied value quoted in a message: JSON, bounded (never a body excerpt). */
function quote(value: unknown): string {
  const s = JSON.stringify(value) ?? "nothing";
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

function parseReview(body: Buffer): AdmissionRequest {
  let json: unknown;
  try {
    json = JSON.parse(body.toString("utf8"));
  } catch {
    // V8's message quotes part of the input, which may be a Secret: say only that it failed.
    throw new BadRequest(400, "body is not valid JSON");
  }
  const top = json as { apiVersion?: unknown; kind?: unknown } | null;
  if (typeof top !== "object" || top === null) throw new BadRequest(400, "body must be a JSON object");
  if (top.apiVersion !== ADMISSION_API_VERSION) {
    throw new BadRequest(
      400,
      `apiVersion must be ${ADMISSION_API_VERSION} (got ${quote(top.apiVersion)}); register the webhook with admissionReviewVersions ["v1"]`,
    );
  }
  if (top.kind !== "AdmissionReview") {
    throw new BadRequest(400, `kind must be AdmissionReview (got ${quote(top.kind)})`);
  }
  const parsed = reviewSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new BadRequest(400, `${["", ...issue.path].join(".").slice(1) || "body"}: ${issue.message}`);
  }
  return parsed.data.request as AdmissionRequest;
}

function isValidResult(r: unknown): r is AdmissionResult {
  return typeof r === "object" && r !== null && typeof (r as AdmissionResult).allowed === "boolean";
}

function reviewResponse(uid: string, result: AdmissionResult): string {
  const response: Record<string, unknown> = { uid, allowed: result.allowed };
  if (!result.allowed) {
    response.status = { code: result.code ?? 403, message: result.message ?? "denied by Custody admission" };
  } else if (result.patch && result.patch.length > 0) {
    response.patchType = "JSONPatch";
    response.patch = Buffer.from(JSON.stringify(result.patch satisfies JsonPatchOperation[])).toString(
      "base64",
    );
  }
  if (result.warnings && result.warnings.length > 0) response.warnings = result.warnings;
  return JSON.stringify({ apiVersion: ADMISSION_API_VERSION, kind: "AdmissionReview", response });
}

export async function startAdmissionServer(options: AdmissionServerOptions): Promise<AdmissionServer> {
  const { log, observe } = options;
  const routes = new Map(Object.entries(options.routes));
  const maxBody = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const graceMs = options.closeGraceMs ?? 5_000;
  const sessions = new Set<Http2Session>();
  const sockets = new Set<TLSSocket>();
  /** HTTP/1.1 requests in flight per socket, so close() can drop idle keep-alive sockets at once. */
  const h1InFlight = new Map<TLSSocket, number>();
  let closing = false;

  const server: Http2SecureServer = http2.createSecureServer({
    ...TLS_BASE,
    cert: options.tls.certPem,
    key: options.tls.keyPem,
    allowHTTP1: true,
  });

  const reply = (
    req: Http2ServerRequest,
    res: Http2ServerResponse,
    status: number,
    body: string,
    contentType = JSON_HEADERS,
    abortRest = false,
  ): void => {
    const headers: Record<string, string | number> = {
      "content-type": contentType,
      "content-length": Buffer.byteLength(body),
    };
    const h1 = req.httpVersionMajor < 2;
    // HTTP/1.1 cannot skip an unread body: close the connection instead.
    if (h1 && (abortRest || closing)) headers.connection = "close";
    res.writeHead(status, headers);
    res.end(body, () => {
      // RFC 9113 §8.1: after a complete response the server may stop an
      // unread request body with RST_STREAM(NO_ERROR).
      if (!h1 && abortRest) req.stream.close(http2.constants.NGHTTP2_NO_ERROR);
    });
  };
  const refuse = (
    req: Http2ServerRequest,
    res: Http2ServerResponse,
    status: number,
    message: string,
    abortRest = false,
  ) => reply(req, res, status, `${message}\n`, "text/plain; charset=utf-8", abortRest);

  const handle = async (
    req: Http2ServerRequest,
    res: Http2ServerResponse,
    path: string,
    handler: AdmissionHandler,
    body: Buffer,
    start: number,
  ): Promise<void> => {
    let request: AdmissionRequest;
    try {
      request = parseReview(body);
    } catch (e) {
      if (!(e instanceof BadRequest)) throw e;
      log.warn("admission request refused", { path, status: e.status, reason: e.message });
      refuse(req, res, e.status, e.message);
      return;
    }
    let result: AdmissionResult;
    let response: string;
    try {
      const r: unknown = await handler(request);
      if (!isValidResult(r)) throw new Error("handler returned no AdmissionResult");
      response = reviewResponse(request.uid, r); // inside the try: an unserialisable patch fails closed too
      result = r;
    } catch (err) {
      // Fail closed: an unexpected error never admits.
      log.error("admission handler failed", {
        path,
        uid: request.uid,
        operation: request.operation,
        resource: `${request.resource.group}/${request.resource.version}/${request.resource.resource}`,
        namespace: request.namespace,
        name: request.name,
        error: err,
      });
      result = { allowed: false, code: 500, message: `custody admission error: ${shortError(err)}` };
      response = reviewResponse(request.uid, result);
    }
    reply(req, res, 200, response);
    observe?.(path, performance.now() - start, result.allowed);
  };

  server.on("request", (req: Http2ServerRequest, res: Http2ServerResponse) => {
    const start = performance.now();
    const url = req.url ?? "/";
    const q = url.indexOf("?");
    // The apiserver appends ?timeout=<n>s to the registered path.
    const path = q < 0 ? url : url.slice(0, q);
    const handler = routes.get(path);
    if (req.httpVersionMajor < 2) {
      const s = req.socket as TLSSocket;
      h1InFlight.set(s, (h1InFlight.get(s) ?? 0) + 1);
      res.once("close", () => {
        const n = (h1InFlight.get(s) ?? 1) - 1;
        if (n > 0) h1InFlight.set(s, n);
        else h1InFlight.delete(s);
      });
    }
    // Refusals before the body is read do not read it (abortRest): an
    // unknown path must not be a way to make the server swallow gigabytes.
    if (!handler) {
      refuse(req, res, 404, `no admission handler at ${quote(path)}`, true);
      return;
    }
    if (req.method !== "POST") {
      res.setHeader("allow", "POST");
      refuse(req, res, 405, `method ${quote(req.method)} not allowed: POST an AdmissionReview`, true);
      return;
    }
    const contentType = req.headers["content-type"] ?? "";
    const mediaType = contentType.split(";", 1)[0]!.trim().toLowerCase();
    if (mediaType !== "application/json") {
      refuse(req, res, 400, `content-type must be application/json (got ${quote(contentType)})`, true);
      return;
    }
    const declared = Number(req.headers["content-length"] ?? -1);
    if (declared > maxBody) {
      refuse(req, res, 413, `body of ${declared} bytes exceeds the ${maxBody}-byte limit`, true);
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = false;
    req.on("data", (chunk: Buffer) => {
      if (tooLarge) return;
      size += chunk.length;
      if (size > maxBody) {
        tooLarge = true;
        chunks.length = 0;
        refuse(req, res, 413, `body exceeds the ${maxBody}-byte limit`, true);
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => {
      if (tooLarge) return;
      const body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size);
      handle(req, res, path, handler, body, start).catch((err: unknown) => {
        log.error("admission response failed", { path, error: err });
        if (!res.headersSent) refuse(req, res, 500, "internal error");
      });
    });
    req.on("error", (err: unknown) => log.debug("admission request stream error", { path, error: err }));
  });

  server.on("session", (session: Http2Session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
    session.on("error", (err) => log.debug("http2 session error", { error: err }));
  });
  server.on("secureConnection", (socket: TLSSocket) => {
    sockets.add(socket);
    socket.once("close", () => {
      sockets.delete(socket);
      h1InFlight.delete(socket);
    });
  });
  // Handshake failures (a client distrusting us, scanners) are routine: debug only.
  server.on("tlsClientError", (err) => log.debug("TLS handshake failed", { error: err }));

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  server.on("error", (err) => log.error("admission server error", { error: err }));
  const port = (server.address() as AddressInfo).port;
  log.info("admission server listening", { host: options.host, port, paths: [...routes.keys()] });

  return {
    port,
    setCertificate(certPem: string, keyPem: string): void {
      // Built first so that a bad pair throws here and the server keeps serving the old one.
      tls.createSecureContext({ ...TLS_BASE, cert: certPem, key: keyPem });
      server.setSecureContext({ ...TLS_BASE, cert: certPem, key: keyPem });
    },
    close(): Promise<void> {
      closing = true;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const session of sessions) session.close(); // GOAWAY: in-flight streams finish
      for (const socket of sockets) {
        // Idle HTTP/1.1 keep-alive sockets would hold close() for nothing.
        if (!socket.alpnProtocol || socket.alpnProtocol === "http/1.1") {
          if (!h1InFlight.has(socket)) socket.destroy();
        }
      }
      const timer = setTimeout(() => {
        for (const session of sessions) session.destroy();
        for (const socket of sockets) socket.destroy();
      }, graceMs);
      timer.unref();
      return closed.finally(() => clearTimeout(timer));
    },
  };
}
