// The identity endpoint's HTTPS server: OIDC discovery and JWKS for relying
// parties, the token-exchange endpoint for agents. It asks every client for a
// certificate but does not require one at the TLS layer: discovery is public,
// and a token request without a valid certificate must get an OAuth error
// (invalid_client), not a dropped connection. Handlers see the verified peer
// chain (or none); they hold the rules, this shell only moves bytes.
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer, type Server } from "node:https";
import type { TLSSocket } from "node:tls";
import type { Logger } from "../log.ts";

export const MAX_FORM_BYTES = 64 * 1024;

export interface PeerCertificate {
  /** DER of the client's leaf. */
  readonly der: Uint8Array;
  /** DER of the certificates the client sent above its leaf. */
  readonly intermediates: readonly Uint8Array[];
}

export interface IdentityRequest {
  readonly method: string;
  readonly path: string;
  /** Present only when the TLS layer verified the chain against the configured CAs. */
  readonly peer: PeerCertificate | undefined;
  /** True when the client sent a certificate the TLS layer could not verify. */
  readonly peerRejected: boolean;
  /** Why the TLS layer did not verify it (OpenSSL's reason, e.g. CERT_HAS_EXPIRED). */
  readonly peerError?: string;
  readonly contentType: string;
  readonly body: Buffer;
  readonly headers: IncomingMessage["headers"];
}

export interface IdentityResponse {
  readonly status: number;
  readonly headers: Record<string, string>;
  readonly body: string;
}

export type IdentityHandler = (req: IdentityRequest) => Promise<IdentityResponse> | IdentityResponse;

export interface IdentityServerOptions {
  host: string;
  port: number;
  tls: { certPem: string; keyPem: string };
  /** CAs that client certificates must chain to (PEM). */
  clientCaPem: string;
  handler: IdentityHandler;
  log: Logger;
}

export interface IdentityServer {
  readonly port: number;
  setCertificate(tls: { certPem: string; keyPem: string }, clientCaPem?: string): void;
  close(): Promise<void>;
}

export async function startIdentityServer(opts: IdentityServerOptions): Promise<IdentityServer> {
  let clientCaPem = opts.clientCaPem;
  const server: Server = createServer({
    cert: opts.tls.certPem,
    key: opts.tls.keyPem,
    ca: clientCaPem,
    requestCert: true,
    rejectUnauthorized: false,
    minVersion: "TLSv1.2",
  });
  server.requestTimeout = 10_000;
  server.headersTimeout = 5_000;

  server.on("request", (req: IncomingMessage, res: ServerResponse) => {
    const socket = req.socket as TLSSocket;
    // A declared body past the limit is refused before it is read.
    if (Number(req.headers["content-length"] ?? 0) > MAX_FORM_BYTES) {
      res.setHeader("connection", "close");
      send(res, {
        status: 413,
        headers: { "content-type": "application/json" },
        body: '{"error":"invalid_request","error_description":"body too large"}',
      });
      req.destroy();
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = false;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > MAX_FORM_BYTES) {
        tooLarge = true;
        return;
      }
      chunks.push(c);
    });
    req.on("end", () => {
      if (tooLarge) {
        send(res, {
          status: 413,
          headers: { "content-type": "application/json" },
          body: '{"error":"invalid_request","error_description":"body too large"}',
        });
        return;
      }
      const cert = socket.getPeerCertificate?.(true);
      const hasCert =
        cert !== undefined && cert !== null && Object.keys(cert).length > 0 && cert.raw !== undefined;
      let peer: PeerCertificate | undefined;
      if (hasCert && socket.authorized) {
        const intermediates: Uint8Array[] = [];
        let at = cert.issuerCertificate;
        const seen = new Set<unknown>([cert]);
        while (at && !seen.has(at) && at.raw) {
          seen.add(at);
          intermediates.push(new Uint8Array(at.raw));
          at = at.issuerCertificate;
        }
        peer = { der: new Uint8Array(cert.raw), intermediates };
      }
      const request: IdentityRequest = {
        method: req.method ?? "GET",
        path: (req.url ?? "/").split("?")[0] ?? "/",
        peer,
        peerRejected: hasCert && !socket.authorized,
        ...(hasCert && !socket.authorized && socket.authorizationError
          ? { peerError: String(socket.authorizationError) }
          : {}),
        contentType: String(req.headers["content-type"] ?? ""),
        body: Buffer.concat(chunks),
        headers: req.headers,
      };
      Promise.resolve()
        .then(() => opts.handler(request))
        .then(
          (r) => send(res, r),
          (err: unknown) => {
            opts.log.error("identity endpoint handler failed", {
              error: err instanceof Error ? err.message : String(err),
            });
            send(res, {
              status: 500,
              headers: { "content-type": "application/json", "cache-control": "no-store" },
              body: '{"error":"server_error","error_description":"internal error"}',
            });
          },
        );
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, opts.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : opts.port;
  opts.log.info("identity endpoint listening", { host: opts.host, port });

  return {
    port,
    setCertificate(tls, ca) {
      if (ca !== undefined) clientCaPem = ca;
      server.setSecureContext({
        cert: tls.certPem,
        key: tls.keyPem,
        ca: clientCaPem,
        minVersion: "TLSv1.2",
      });
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function send(res: ServerResponse, r: IdentityResponse): void {
  if (res.headersSent) return;
  res.writeHead(r.status, { ...r.headers, "content-length": Buffer.byteLength(r.body) });
  res.end(r.body);
}
