import { randomBytes } from "node:crypto";
import http2, { type ClientHttp2Session } from "node:http2";
import https from "node:https";
import tls from "node:tls";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type CertificateAuthority, generateCa } from "../../core/x509/ca.ts";
import { generateLeafKeyPair } from "../../core/x509/mint.ts";
import { serialFromRandom } from "../../core/x509/serial.ts";
import { mintServingCert } from "../../core/x509/serving.ts";
import { type AdmissionServer, startAdmissionServer } from "../../shells/https/admission-server.ts";
import { createLogger } from "../../shells/log.ts";
import { type AdmissionHandler, type AdmissionRequest, allow, deny } from "../../webhook/admission.ts";

const HOST = "webhook.custody-system.svc";

function newCa(): CertificateAuthority {
  return generateCa({
    trustDomain: "custody.local",
    now: new Date(Date.now() - 60_000),
    validityMs: 24 * 3_600_000,
    serial: serialFromRandom(randomBytes(16)),
  }).ca;
}

function servingPair(ca: CertificateAuthority) {
  const keys = generateLeafKeyPair();
  const now = Date.now();
  const minted = mintServingCert({
    ca,
    subjectPublicKey: keys.publicKeySpki,
    dnsNames: [HOST],
    ipAddresses: ["127.0.0.1"],
    serial: serialFromRandom(randomBytes(16)),
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 3_600_000),
  });
  return { certPem: minted.chainPem, keyPem: keys.privateKeyPem, serialHex: minted.serialHex };
}

function review(overrides: Partial<AdmissionRequest> = {}, top: Record<string, unknown> = {}) {
  return {
    apiVersion: "admission.k8s.io/v1",
    kind: "AdmissionReview",
    request: {
      uid: "705ab4f5-6393-11e8-b7cc-42010a800002",
      kind: { group: "", version: "v1", kind: "Pod" },
      resource: { group: "", version: "v1", resource: "pods" },
      requestKind: { group: "", version: "v1", kind: "Pod" },
      namespace: "team-a",
      name: "agent-0",
      operation: "CREATE",
      userInfo: {
        username: "alice",
        uid: "u-1",
        groups: ["system:authenticated"],
        extra: { "authentication.kubernetes.io/pod-name": ["p"] },
      },
      object: {
        apiVersion: "v1",
        kind: "Pod",
        metadata: { name: "agent-0", annotations: { note: "TOP-SECRET-VALUE" } },
      },
      oldObject: null,
      dryRun: false,
      options: { apiVersion: "meta.k8s.io/v1", kind: "CreateOptions" },
      ...overrides,
    },
    ...top,
  };
}

interface Reply {
  status: number;
  headers: http2.IncomingHttpHeaders;
  text: string;
  // biome-ignore lint/suspicious/noExplicitAny: test access to the JSON envelope
  json: any;
}

function h2Session(port: number, ca: string): ClientHttp2Session {
  return http2.connect(`https://127.0.0.1:${port}`, { ca, servername: HOST });
}

function h2Post(
  session: ClientHttp2Session,
  path: string,
  body: string | Buffer | Buffer[],
  headers: http2.OutgoingHttpHeaders = { "content-type": "application/json" },
  method = "POST",
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = session.request({ ":method": method, ":path": path, ...headers });
    let status = 0;
    let resHeaders: http2.IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    req.on("response", (h) => {
      status = Number(h[":status"]);
      resHeaders = h;
    });
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("error", reject);
    // The readable side's end, not "close": after a 413 the server resets the
    // stream (RFC 9113 §8.1) and node's client never closes a stream whose
    // request body is stuck behind flow control.
    req.on("end", () => {
      const text = Buffer.concat(chunks).toString();
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch {
        json = undefined;
      }
      resolve({ status, headers: resHeaders, text, json });
    });
    req.on("close", () => {
      if (status === 0) reject(new Error("stream closed without a response"));
    });
    if (method === "GET") return; // node ends a GET's stream itself
    if (Array.isArray(body)) {
      // Streamed without content-length, one chunk at a time.
      for (const b of body) req.write(b);
      req.end();
    } else {
      req.end(body);
    }
  });
}

function h1Post(
  port: number,
  ca: string,
  path: string,
  body: string,
  headers: Record<string, string> = { "content-type": "application/json" },
  agent?: https.Agent,
): Promise<Reply & { alpn: string | false | null | undefined }> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: "127.0.0.1", port, path, method: "POST", ca, servername: HOST, headers, agent },
      (res) => {
        const alpn = (res.socket as tls.TLSSocket).alpnProtocol;
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString();
          let json: unknown;
          try {
            json = JSON.parse(text);
          } catch {
            json = undefined;
          }
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            text,
            json,
            alpn,
          });
        });
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

let ca: CertificateAuthority;
let pair: ReturnType<typeof servingPair>;
const logLines: string[] = [];
const log = createLogger({ name: "test", level: "debug", write: (l) => void logLines.push(l) });
const observed: Array<[string, number, boolean]> = [];
const seen: AdmissionRequest[] = [];
let server: AdmissionServer;
let session: ClientHttp2Session;

const routes: Record<string, AdmissionHandler> = {
  "/admit/allow": async (r) => {
    seen.push(r);
    return allow(
      [{ op: "add", path: "/metadata/labels", value: { "custody.dev/seen": "yes" } }],
      ["task is Pending: the credential volume mounts once issued"],
    );
  },
  "/admit/plain": async () => allow(),
  "/admit/deny": async () => deny(403, "spec.serviceAccountName: must be the task's service account"),
  "/admit/deny-nocode": async () => ({ allowed: false, patch: [{ op: "add", path: "/x", value: 1 }] }),
  "/admit/throw": async () => {
    throw new Error("lookup of agenttask team-a/t1 failed: connection refused\nsecond line");
  },
  "/admit/nothing": (async () => undefined) as unknown as AdmissionHandler,
  "/admit/bigint": async () => allow([{ op: "add", path: "/x", value: 1n }]),
};

beforeAll(async () => {
  ca = newCa();
  pair = servingPair(ca);
  server = await startAdmissionServer({
    host: "127.0.0.1",
    port: 0,
    routes,
    tls: pair,
    log,
    observe: (path, ms, allowed) => observed.push([path, ms, allowed]),
    maxBodyBytes: 64 * 1024,
  });
  session = h2Session(server.port, ca.certPem);
});

afterAll(async () => {
  session.destroy();
  await server.close();
});

afterEach(() => {
  observed.length = 0;
  seen.length = 0;
  logLines.length = 0;
});

describe("AdmissionReview over HTTP/2", () => {
  it("negotiates h2, passes the parsed request to the route's handler and returns patch and warnings", async () => {
    const r = await h2Post(session, "/admit/allow?timeout=5s", JSON.stringify(review()));
    expect(session.alpnProtocol).toBe("h2");
    expect(r.status).toBe(200);
    expect(r.headers["content-type"]).toBe("application/json");
    expect(r.json).toEqual({
      apiVersion: "admission.k8s.io/v1",
      kind: "AdmissionReview",
      response: {
        uid: "705ab4f5-6393-11e8-b7cc-42010a800002",
        allowed: true,
        patchType: "JSONPatch",
        patch: expect.any(String),
        warnings: ["task is Pending: the credential volume mounts once issued"],
      },
    });
    expect(JSON.parse(Buffer.from(r.json.response.patch, "base64").toString())).toEqual([
      { op: "add", path: "/metadata/labels", value: { "custody.dev/seen": "yes" } },
    ]);
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatchObject({
      uid: "705ab4f5-6393-11e8-b7cc-42010a800002",
      operation: "CREATE",
      namespace: "team-a",
      name: "agent-0",
      userInfo: { username: "alice", extra: { "authentication.kubernetes.io/pod-name": ["p"] } },
      object: { metadata: { name: "agent-0" } },
      dryRun: false,
    });
    expect(observed).toEqual([["/admit/allow", expect.any(Number), true]]);
    expect(observed[0]![1]).toBeGreaterThan(0);
  });

  it("omits patch, status and warnings when a handler simply allows", async () => {
    const r = await h2Post(session, "/admit/plain", JSON.stringify(review()));
    expect(r.json.response).toEqual({ uid: "705ab4f5-6393-11e8-b7cc-42010a800002", allowed: true });
  });

  it("returns a refusal's code and message, defaults the code to 403 and drops a patch on refusal", async () => {
    const r = await h2Post(session, "/admit/deny", JSON.stringify(review()));
    expect(r.json.response).toEqual({
      uid: "705ab4f5-6393-11e8-b7cc-42010a800002",
      allowed: false,
      status: { code: 403, message: "spec.serviceAccountName: must be the task's service account" },
    });
    const n = await h2Post(session, "/admit/deny-nocode", JSON.stringify(review()));
    expect(n.json.response).toEqual({
      uid: "705ab4f5-6393-11e8-b7cc-42010a800002",
      allowed: false,
      status: { code: 403, message: "denied by Custody admission" },
    });
    expect(observed.map((o) => o[2])).toEqual([false, false]);
  });

  it("fails closed with 500 when a handler throws or returns nothing, logging without the body", async () => {
    const r = await h2Post(session, "/admit/throw", JSON.stringify(review()));
    expect(r.status).toBe(200);
    expect(r.json.response).toEqual({
      uid: "705ab4f5-6393-11e8-b7cc-42010a800002",
      allowed: false,
      status: {
        code: 500,
        message: "custody admission error: lookup of agenttask team-a/t1 failed: connection refused",
      },
    });
    const n = await h2Post(session, "/admit/nothing", JSON.stringify(review()));
    expect(n.json.response.allowed).toBe(false);
    expect(n.json.response.status).toEqual({
      code: 500,
      message: "custody admission error: handler returned no AdmissionResult",
    });
    const errors = logLines.map((l) => JSON.parse(l)).filter((l) => l.level === "error");
    expect(errors).toHaveLength(2);
    expect(errors[0]).toMatchObject({
      msg: "admission handler failed",
      fields: {
        path: "/admit/throw",
        uid: "705ab4f5-6393-11e8-b7cc-42010a800002",
        operation: "CREATE",
        resource: "/v1/pods",
        namespace: "team-a",
        name: "agent-0",
      },
    });
    expect(logLines.join("")).not.toContain("TOP-SECRET-VALUE");
    expect(observed.map((o) => [o[0], o[2]])).toEqual([
      ["/admit/throw", false],
      ["/admit/nothing", false],
    ]);
  });

  it("fails closed when a handler's patch cannot be serialised", async () => {
    const r = await h2Post(session, "/admit/bigint", JSON.stringify(review()));
    expect(r.json.response).toMatchObject({ allowed: false, status: { code: 500 } });
    expect(r.json.response.status.message).toMatch(/^custody admission error: .*BigInt/);
    expect(r.json.response.patch).toBeUndefined();
  });

  it("quotes no part of a malformed body in the reply or the log", async () => {
    const r = await h2Post(
      session,
      "/admit/allow",
      '{"apiVersion":"admission.k8s.io/v1","token":"TOP-SECRET-VALUE" oops}',
    );
    expect(r.status).toBe(400);
    expect(r.text).toBe("body is not valid JSON\n");
    expect(logLines.join("")).not.toContain("TOP-SECRET-VALUE");
    expect(logLines.map((l) => JSON.parse(l).msg)).toEqual(["admission request refused"]);
  });

  it.each([
    [
      "wrong apiVersion",
      JSON.stringify(review({}, { apiVersion: "admission.k8s.io/v1beta1" })),
      /apiVersion must be admission.k8s.io\/v1 \(got "admission.k8s.io\/v1beta1"\)/,
    ],
    ["wrong kind", JSON.stringify(review({}, { kind: "Review" })), /kind must be AdmissionReview/],
    ["malformed JSON", '{"apiVersion": "admission.k8s.io/v1",', /not valid JSON/],
    ["not an object", "[1,2]", /apiVersion must be/],
    ["null", "null", /must be a JSON object/],
    [
      "no request",
      JSON.stringify({ apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview" }),
      /^request: /,
    ],
    ["empty uid", JSON.stringify(review({ uid: "" })), /^request\.uid: /],
    ["bad operation", JSON.stringify(review({ operation: "PATCH" as "CREATE" })), /^request\.operation: /],
    [
      "bad groups",
      JSON.stringify(review({ userInfo: { groups: "admins" as unknown as string[] } })),
      /^request\.userInfo\.groups: /,
    ],
  ])("refuses %s with 400 and a message", async (_, body, message) => {
    const r = await h2Post(session, "/admit/allow", body);
    expect(r.status).toBe(400);
    expect(r.text).toMatch(message);
    expect(seen).toHaveLength(0);
    expect(observed).toHaveLength(0);
  });

  it("refuses a wrong content-type with 400, an unknown path with 404 and GET with 405", async () => {
    const ct = await h2Post(session, "/admit/allow", JSON.stringify(review()), {
      "content-type": "text/plain",
    });
    expect(ct.status).toBe(400);
    expect(ct.text).toContain('content-type must be application/json (got "text/plain")');
    const withCharset = await h2Post(session, "/admit/plain", JSON.stringify(review()), {
      "content-type": "application/json; charset=utf-8",
    });
    expect(withCharset.status).toBe(200);
    const missing = await h2Post(session, "/admit/nope?timeout=5s", JSON.stringify(review()));
    expect(missing.status).toBe(404);
    // Not read: a big body to an unknown path is answered without draining it.
    const bigMissing = await h2Post(session, "/admit/nope", Buffer.alloc(1024 * 1024, 0x20));
    expect(bigMissing.status).toBe(404);
    expect(missing.text).toContain('no admission handler at "/admit/nope"');
    const get = await h2Post(session, "/admit/allow", "", {}, "GET");
    expect(get.status).toBe(405);
    expect(get.headers.allow).toBe("POST");
    // Only the one AdmissionReview that reached a handler is observed.
    expect(observed.map((o) => o[0])).toEqual(["/admit/plain"]);
  });

  it("answers 413 to a body over the limit, declared or streamed, and the session keeps working", async () => {
    const big = Buffer.alloc(64 * 1024 + 1, 0x20);
    const declared = await h2Post(session, "/admit/allow", big, {
      "content-type": "application/json",
      "content-length": String(big.length),
    });
    expect(declared.status).toBe(413);
    expect(declared.text).toContain("exceeds the 65536-byte limit");
    const streamed = await h2Post(session, "/admit/allow", [big.subarray(0, 40_000), big.subarray(40_000)]);
    expect(streamed.status).toBe(413);
    // Exactly at the limit is fine (and a valid review padded with spaces still parses).
    const exact = Buffer.alloc(64 * 1024, 0x20);
    Buffer.from(JSON.stringify(review())).copy(exact);
    const ok = await h2Post(session, "/admit/plain", exact);
    expect(ok.status).toBe(200);
    expect(ok.json.response.allowed).toBe(true);
  });

  it("uses the 3 MiB default limit when none is given", async () => {
    const s = await startAdmissionServer({ host: "127.0.0.1", port: 0, routes, tls: pair, log });
    const c = h2Session(s.port, ca.certPem);
    try {
      const body = JSON.stringify(review({ object: { pad: "x".repeat(3 * 1024 * 1024 - 2_000) } }));
      expect(body.length).toBeLessThan(3 * 1024 * 1024);
      expect((await h2Post(c, "/admit/plain", body)).status).toBe(200);
      const over = await h2Post(c, "/admit/plain", Buffer.alloc(3 * 1024 * 1024 + 1, 0x20));
      expect(over.status).toBe(413);
    } finally {
      c.destroy();
      await s.close();
    }
  });
});

describe("HTTP/1.1 fallback", () => {
  it("serves the same AdmissionReview to a client that does not offer h2", async () => {
    const r = await h1Post(server.port, ca.certPem, "/admit/deny?timeout=10s", JSON.stringify(review()));
    expect(r.alpn).toBe(false);
    expect(r.status).toBe(200);
    expect(r.json.response).toMatchObject({ allowed: false, status: { code: 403 } });
  });

  it("refuses an over-limit declared body with 413 and closes the connection", async () => {
    const r = await h1Post(server.port, ca.certPem, "/admit/allow", "x".repeat(64 * 1024 + 1));
    expect(r.status).toBe(413);
    expect(r.headers.connection).toBe("close");
  });
});

describe("TLS", () => {
  it("refuses TLS 1.1 and accepts TLS 1.2", async () => {
    const attempt = (maxVersion: tls.SecureVersion) =>
      new Promise<string>((resolve, reject) => {
        const s = tls.connect({
          host: "127.0.0.1",
          port: server.port,
          ca: ca.certPem,
          servername: HOST,
          minVersion: "TLSv1",
          maxVersion,
          // Let the client offer old versions at all; the server must be the one refusing.
          ciphers: "DEFAULT:@SECLEVEL=0",
        });
        s.on("secureConnect", () => {
          resolve(s.getProtocol() ?? "");
          s.destroy();
        });
        s.on("error", reject);
      });
    expect(await attempt("TLSv1.2")).toBe("TLSv1.2");
    // "tlsv1 alert protocol version": the server's alert, not a client-side refusal.
    await expect(attempt("TLSv1.1")).rejects.toThrow(/alert protocol version/i);
  });

  it("hot-swaps the certificate for new connections; the open session keeps working; a bad pair is refused", async () => {
    const peerSerial = () =>
      new Promise<string>((resolve, reject) => {
        const s = tls.connect({
          host: "127.0.0.1",
          port: server.port,
          ca: ca.certPem,
          servername: HOST,
          ALPNProtocols: ["h2"],
        });
        s.on("secureConnect", () => {
          resolve(`${s.getPeerCertificate().serialNumber}/${s.alpnProtocol}`);
          s.destroy();
        });
        s.on("error", reject);
      });
    expect(await peerSerial()).toBe(`${pair.serialHex.toUpperCase()}/h2`);
    const next = servingPair(ca);
    server.setCertificate(next.certPem, next.keyPem);
    expect(await peerSerial()).toBe(`${next.serialHex.toUpperCase()}/h2`);
    expect((await h2Post(session, "/admit/plain", JSON.stringify(review()))).status).toBe(200);

    const other = servingPair(ca);
    expect(() => server.setCertificate(next.certPem, other.keyPem)).toThrow();
    expect(() => server.setCertificate("not a pem", next.keyPem)).toThrow();
    expect(await peerSerial()).toBe(`${next.serialHex.toUpperCase()}/h2`);
    const fresh = h2Session(server.port, ca.certPem);
    try {
      expect((await h2Post(fresh, "/admit/plain", JSON.stringify(review()))).status).toBe(200);
    } finally {
      fresh.close();
    }
  });

  it("is not trusted by a client anchored on another CA", async () => {
    const c = h2Session(server.port, newCa().certPem);
    const err = await new Promise<Error>((resolve) => c.on("error", resolve));
    expect((err as NodeJS.ErrnoException).code).toBe("UNABLE_TO_VERIFY_LEAF_SIGNATURE");
    c.destroy();
  });
});

describe("close()", () => {
  it("ends idle HTTP/2 sessions and keep-alive HTTP/1.1 sockets promptly, after in-flight requests finish", async () => {
    let release: () => void = () => {};
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const s = await startAdmissionServer({
      host: "127.0.0.1",
      port: 0,
      routes: {
        "/slow": async () => {
          await gate;
          return allow();
        },
        "/fast": async () => allow(),
      },
      tls: pair,
      log,
      closeGraceMs: 10_000,
    });
    const idle = h2Session(s.port, ca.certPem);
    const busy = h2Session(s.port, ca.certPem);
    const agent = new https.Agent({ keepAlive: true });
    try {
      expect((await h2Post(idle, "/fast", JSON.stringify(review()))).status).toBe(200);
      expect(
        (await h1Post(s.port, ca.certPem, "/fast", JSON.stringify(review()), undefined, agent)).status,
      ).toBe(200);
      const slow = h2Post(busy, "/slow", JSON.stringify(review()));
      await new Promise((r) => setTimeout(r, 50));
      const started = Date.now();
      const closed = s.close();
      setTimeout(release, 200);
      expect((await slow).json.response.allowed).toBe(true);
      await closed;
      expect(Date.now() - started).toBeLessThan(3_000);
    } finally {
      agent.destroy();
      idle.destroy();
      busy.destroy();
    }
  });
});
