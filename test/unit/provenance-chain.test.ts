import { createHash, generateKeyPairSync, sign, verify, webcrypto } from "node:crypto";
import fc from "fast-check";
import { calculateJwkThumbprint } from "jose";
import { describe, expect, it } from "vitest";
import { canonicalize } from "../../core/provenance/canonical-json.ts";
import { createStreamWriter } from "../../core/provenance/chain.ts";
import { makeCheckpoint, verifyCheckpoint } from "../../core/provenance/checkpoint.ts";
import {
  digestSensitive,
  EVENT_TYPES,
  GENESIS_HASH,
  parseEventInput,
  saltedDigest,
} from "../../core/provenance/events.ts";
import {
  createEs256Signer,
  createKeyRing,
  derToP1363,
  jwkThumbprint,
  p1363ToDer,
  type Signer,
  verifyEs256,
} from "../../core/provenance/sign.ts";
import {
  KEY,
  KEYS,
  SAMPLE_DATA,
  SIGNER,
  SPIFFE_ID,
  STREAM,
  sampleInput,
  TIME,
  TYPES,
} from "./provenance-fixtures.ts";

const sha256 = (s: string) => createHash("sha256").update(s, "utf8").digest("hex");
const text = new TextDecoder();

// A signer whose output depends only on its input, to show the writer is otherwise deterministic.
const FAKE_SIGNER: Signer = {
  kid: SIGNER.kid,
  sign: (bytes) => new Uint8Array([...createHash("sha512").update(bytes).digest()]),
};

describe("event model", () => {
  it("defines a data schema, and a sample that passes it, for every event type", () => {
    expect(EVENT_TYPES).toEqual([
      "dev.custody.task.requested",
      "dev.custody.task.delegation.verified",
      "dev.custody.task.delegation.refused",
      "dev.custody.task.policy.decided",
      "dev.custody.task.policy.revoked",
      "dev.custody.task.action.decided",
      "dev.custody.task.action.performed",
      "dev.custody.task.issued",
      "dev.custody.task.renewed",
      "dev.custody.task.issuance.abandoned",
      "dev.custody.task.injected",
      "dev.custody.task.denied",
      "dev.custody.task.expired",
      "dev.custody.task.revoked",
      "dev.custody.task.deleted",
      "dev.custody.task.jwtsvid.issued",
      "dev.custody.task.token.exchanged",
      "dev.custody.task.token.refused",
    ]);
    for (const [i] of TYPES.entries()) expect(() => parseEventInput(sampleInput(i))).not.toThrow();
  });

  it("names the field and rule of bad input", () => {
    const good = sampleInput(0);
    const bad = (patch: Record<string, unknown>) => () => parseEventInput({ ...good, ...patch });
    expect(bad({ type: "dev.custody.task.exploded" })).toThrow(expect.objectContaining({ field: "type" }));
    expect(bad({ time: "yesterday" })).toThrow(expect.objectContaining({ field: "time" }));
    expect(bad({ custodyseq: 3 })).toThrow(expect.objectContaining({ rule: "unknown-field" }));
    const context = { ...SAMPLE_DATA["dev.custody.task.issued"].context };
    expect(
      bad({ type: "dev.custody.task.deleted", data: { context: { ...context, rootUid: "other" } } }),
    ).toThrow(
      expect.objectContaining({
        field: "data.context.rootUid",
        message: expect.stringMatching(/chainUids\[0\]/),
      }),
    );
    expect(
      bad({ type: "dev.custody.task.deleted", data: { context: { ...context, contextDigest: "ABC" } } }),
    ).toThrow(expect.objectContaining({ field: "data.context.contextDigest" }));
    expect(bad({ type: "dev.custody.task.deleted", data: { context, key: "-----BEGIN" } })).toThrow(
      expect.objectContaining({ field: "data", rule: "unknown-field" }),
    );
  });

  it("digests sensitive values with HMAC-SHA-256 (RFC 4231 test case 6)", () => {
    const salt = new Uint8Array(131).fill(0xaa);
    expect(saltedDigest(salt, "Test Using Larger Than Block-Size Key - Hash Key First")).toBe(
      "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    );
    const d = digestSensitive("a-salt-of-16-bytes!", "salt-1", { "spec.context": "customer 42 wants X" });
    expect(d.saltId).toBe("salt-1");
    expect(d.digests["spec.context"]).toMatch(/^[0-9a-f]{64}$/);
    expect(JSON.stringify(d)).not.toContain("customer");
  });

  it("refuses short salts and ill-formed values", () => {
    expect(() => saltedDigest("short", "v")).toThrow(
      expect.objectContaining({ field: "salt", rule: "min-length" }),
    );
    expect(() => saltedDigest("0123456789abcdef", "\ud800")).toThrow(
      expect.objectContaining({ field: "value" }),
    );
  });
});

describe("keys", () => {
  it("uses the RFC 7638 thumbprint as kid, as jose computes it", async () => {
    const jwk = KEY.publicKey.export({ format: "jwk" });
    expect(SIGNER.kid).toBe(await calculateJwkThumbprint(jwk as never, "sha256"));
    expect(jwkThumbprint(jwk)).toBe(SIGNER.kid);
    expect(jwkThumbprint(KEY.privateKey)).toBe(SIGNER.kid);
  });

  it("refuses keys that are not P-256 and kids that are not their key's thumbprint", () => {
    const other = generateKeyPairSync("ec", { namedCurve: "P-384" });
    expect(() => createEs256Signer(other.privateKey)).toThrow(expect.objectContaining({ rule: "es256-key" }));
    expect(() => createEs256Signer(KEY.publicKey)).toThrow(/private key/);
    const p256 = generateKeyPairSync("ec", { namedCurve: "P-256" });
    expect(() => createKeyRing(new Map([[SIGNER.kid, p256.publicKey]]))).toThrow(
      expect.objectContaining({ rule: "kid-thumbprint" }),
    );
    const ring = createKeyRing([KEY.publicKey.export({ format: "jwk" })]);
    expect([...ring.keys()]).toEqual([SIGNER.kid]);
  });
});

describe("ES256 signature encodings", () => {
  it("converts r||s to minimal DER integers and back", () => {
    const rs = new Uint8Array(64);
    rs[31] = 1; // r = 1
    rs[32] = 0x80; // s has its high bit set: needs a 0x00 pad in DER
    const der = p1363ToDer(rs);
    expect(Buffer.from(der).toString("hex")).toBe("3026" + "020101" + "022100" + "80" + "00".repeat(31));
    expect(derToP1363(der)).toEqual(rs);
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 64, maxLength: 64 }), (x) => {
        expect(derToP1363(p1363ToDer(x))).toEqual(x);
      }),
    );
  });

  it("agrees with node:crypto's own IEEE P1363 encoding on real signatures", () => {
    const message = new TextEncoder().encode("provenance");
    for (let i = 0; i < 300; i++) {
      const p1363 = sign("sha256", message, { key: KEY.privateKey, dsaEncoding: "ieee-p1363" });
      expect(verify("sha256", message, KEY.publicKey, p1363ToDer(p1363))).toBe(true);
      expect(verifyEs256(KEY.publicKey, message, p1363)).toBe(true);
      const ours = SIGNER.sign(message);
      expect(verify("sha256", message, { key: KEY.publicKey, dsaEncoding: "ieee-p1363" }, ours)).toBe(true);
    }
  });

  it("refuses a malformed DER signature", () => {
    expect(() => derToP1363(new Uint8Array([0x30, 0x03, 0x02, 0x01, 0x01]))).toThrow(/malformed DER/);
  });
});

describe("stream writer", () => {
  it("numbers from 1, chains each event to the previous hash, and signs the canonical form", async () => {
    const writer = createStreamWriter({ stream: STREAM, epoch: 3, signer: SIGNER });
    const first = writer.append(sampleInput(0));
    const second = writer.append(sampleInput(1));
    expect(first.event.custodyseq).toBe(1);
    expect(first.event.custodyprev).toBe(GENESIS_HASH);
    expect(second.event.custodyseq).toBe(2);
    expect(second.event.custodyprev).toBe(first.event.custodyhash);
    expect(writer.head).toEqual({ seq: 2, hash: second.event.custodyhash });

    const { event } = second;
    const bytes = second.sealed();
    // The record holds what was appended (`event` is read back from its bytes).
    const input = sampleInput(1);
    expect(event.data).toEqual(JSON.parse(JSON.stringify(input.data)));
    expect({ id: event.id, type: event.type, source: event.source }).toEqual({
      id: input.id,
      type: input.type,
      source: input.source,
    });
    expect(event).toMatchObject({
      specversion: "1.0",
      datacontenttype: "application/json",
      custodystream: STREAM,
      custodyepoch: 3,
      custodykid: SIGNER.kid,
      subject: SPIFFE_ID,
      time: TIME,
    });
    // The sealed record is the canonical form of the whole event, signature included.
    const record = JSON.parse(text.decode(bytes)) as typeof event & { custodysig: string };
    expect(text.decode(bytes)).toBe(canonicalize(record));
    const { custodysig, ...unsigned } = record;
    expect(unsigned).toEqual(event);
    // The unsealed record is the event without custodysig, canonical: exactly the signature input.
    expect(text.decode(second.unsealed())).toBe(canonicalize(event));
    // Sealing signs once: the same bytes on every call (a retry re-sends them).
    expect(second.sealed()).toBe(bytes);
    // The hash covers everything but custodyhash and custodysig.
    const { custodyhash, ...unhashed } = event;
    expect(custodyhash).toBe(sha256(canonicalize(unhashed)));
    // The signature covers everything but custodysig, and is a JOSE/WebCrypto ES256 signature.
    const key = await webcrypto.subtle.importKey(
      "jwk",
      KEY.publicKey.export({ format: "jwk" }),
      { name: "ECDSA", namedCurve: "P-256" },
      false,
      ["verify"],
    );
    const ok = await webcrypto.subtle.verify(
      { name: "ECDSA", hash: "SHA-256" },
      key,
      Buffer.from(custodysig, "base64url"),
      new TextEncoder().encode(canonicalize(unsigned)),
    );
    expect(ok).toBe(true);
  });

  it("writes records equal to JCS of the event whatever the strings hold", () => {
    // The writer assembles the record from pieces in canonical member order;
    // escapes and non-ASCII must come out exactly as canonicalize writes them.
    const writer = createStreamWriter({ stream: 's/"q\\b', epoch: 0, signer: FAKE_SIGNER });
    const input = { ...sampleInput(0), id: 'id "quoted" \\ \n tab\t é 😀', source: "src\u0007" };
    const appended = writer.append(input as never);
    const record = JSON.parse(text.decode(appended.sealed())) as Record<string, unknown>;
    expect(text.decode(appended.sealed())).toBe(canonicalize(record));
    expect(text.decode(appended.unsealed())).toBe(canonicalize(appended.event));
    expect(record.id).toBe(input.id);
    expect(record.source).toBe(input.source);
    expect(record.custodystream).toBe('s/"q\\b');
    expect(record.data).toEqual(JSON.parse(JSON.stringify(input.data)));
  });

  it("continues from a given head", () => {
    const writer = createStreamWriter({
      stream: STREAM,
      epoch: 4,
      signer: SIGNER,
      head: { seq: 41, hash: "f".repeat(64) },
    });
    const { event } = writer.append(sampleInput(0));
    expect(event.custodyseq).toBe(42);
    expect(event.custodyprev).toBe("f".repeat(64));
  });

  it("is deterministic given its inputs and a deterministic signer", () => {
    const run = () => {
      const w = createStreamWriter({ stream: STREAM, epoch: 1, signer: FAKE_SIGNER });
      return [0, 1, 2].map((i) => Buffer.from(w.append(sampleInput(i)).sealed()).toString("hex"));
    };
    expect(run()).toEqual(run());
  });

  it("does not advance its head when an append fails; a signer fault fails the seal, not the chain", () => {
    const writer = createStreamWriter({ stream: STREAM, epoch: 1, signer: SIGNER });
    writer.append(sampleInput(0));
    const before = writer.head;
    expect(() => writer.append({ ...sampleInput(1), time: "now" } as never)).toThrow(
      expect.objectContaining({ field: "time" }),
    );
    expect(writer.head).toEqual(before);
    const failing: Signer = { kid: SIGNER.kid, sign: () => new Uint8Array(10) };
    const w2 = createStreamWriter({ stream: STREAM, epoch: 1, signer: failing, head: before });
    const appended = w2.append(sampleInput(1));
    expect(() => appended.sealed()).toThrow(expect.objectContaining({ rule: "es256-signature" }));
    // The unsealed record needs no signer; the next seal would cover it.
    expect(JSON.parse(text.decode(appended.unsealed())).custodysig).toBeUndefined();
  });

  it("refuses bad options, naming them", () => {
    const make = (o: Record<string, unknown>) => () =>
      createStreamWriter({ stream: STREAM, epoch: 1, signer: SIGNER, ...o } as never);
    expect(make({ stream: "has space" })).toThrow(expect.objectContaining({ field: "stream" }));
    expect(make({ epoch: -1 })).toThrow(expect.objectContaining({ field: "epoch" }));
    expect(make({ epoch: 2 ** 31 })).toThrow(expect.objectContaining({ field: "epoch" }));
    expect(make({ head: { seq: 0, hash: "1".repeat(64) } })).toThrow(
      expect.objectContaining({ rule: "genesis" }),
    );
    expect(make({ head: { seq: 1, hash: "xyz" } })).toThrow(expect.objectContaining({ field: "head.hash" }));
    expect(make({ signer: { kid: "nope", sign: SIGNER.sign } })).toThrow(
      expect.objectContaining({ field: "signer.kid" }),
    );
  });
});

describe("checkpoints", () => {
  const ring = createKeyRing(KEYS);
  const cp = makeCheckpoint({
    stream: STREAM,
    seq: 7,
    hash: "e".repeat(64),
    epoch: 2,
    time: TIME,
    signer: SIGNER,
  });

  it("round-trips through JSON and verifies", () => {
    expect(cp).toMatchObject({ type: "dev.custody.checkpoint", stream: STREAM, seq: 7, kid: SIGNER.kid });
    const verdict = verifyCheckpoint(JSON.parse(JSON.stringify(cp)), ring);
    expect(verdict).toEqual({ ok: true, checkpoint: cp });
  });

  it("rejects a changed field, an unknown key and a malformed checkpoint", () => {
    expect(verifyCheckpoint({ ...cp, seq: 8 }, ring)).toMatchObject({ ok: false, kind: "bad-signature" });
    expect(verifyCheckpoint(cp, createKeyRing([]))).toMatchObject({ ok: false, kind: "unknown-key" });
    expect(verifyCheckpoint({ ...cp, extra: 1 }, ring)).toMatchObject({ ok: false, kind: "malformed" });
  });

  it("refuses to make a checkpoint with a bad field", () => {
    expect(() =>
      makeCheckpoint({ stream: STREAM, seq: -1, hash: "e".repeat(64), epoch: 2, time: TIME, signer: SIGNER }),
    ).toThrow(expect.objectContaining({ field: "seq" }));
  });
});
