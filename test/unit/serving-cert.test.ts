import { createPrivateKey, X509Certificate as NodeX509, randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { type CertificateAuthority, generateCa } from "../../core/x509/ca.ts";
import { X509Error } from "../../core/x509/errors.ts";
import { serialFromRandom } from "../../core/x509/serial.ts";
import { createLogger } from "../../shells/log.ts";
import {
  SERVING_BACKDATE_MS,
  type ServingCertificate,
  WebhookServingCert,
  type WebhookServingCertOptions,
} from "../../webhook/serving-cert.ts";
import { FakeClock } from "../support/fake-clock.ts";

const T0 = Date.parse("2026-03-01T12:00:00.000Z");
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

function ca(validityMs = 30 * DAY, now = T0 - HOUR): CertificateAuthority {
  return generateCa({
    trustDomain: "custody.local",
    now: new Date(now),
    validityMs,
    serial: serialFromRandom(randomBytes(16)),
  }).ca;
}

function setup(overrides: Partial<WebhookServingCertOptions> = {}) {
  const clock = new FakeClock(T0);
  const lines: Array<{ level: string; msg: string; fields?: Record<string, unknown> }> = [];
  const log = createLogger({
    name: "test",
    level: "debug",
    write: (l) => void lines.push(JSON.parse(l)),
    now: () => new Date(clock.now()),
  });
  const rotated: ServingCertificate[] = [];
  let signer = ca();
  const sc = new WebhookServingCert({
    ca: () => signer,
    service: { name: "custody-webhook", namespace: "custody-system" },
    dnsNames: ["custody-webhook.custody-system.svc", "webhook.example.test"],
    ipAddresses: ["127.0.0.1", "::1"],
    onRotate: (c) => void rotated.push(c),
    log,
    clock,
    ...overrides,
  });
  return {
    sc,
    clock,
    lines,
    rotated,
    get ca() {
      return signer;
    },
    setCa(next: CertificateAuthority) {
      signer = next;
    },
  };
}

const parse = (c: ServingCertificate) => new NodeX509(c.certPem);

describe("WebhookServingCert", () => {
  it("mints at once from the CA with the service names, extra names and IPs, for 24 h", () => {
    const { sc, ca: signer } = setup();
    const cert = parse(sc.current);
    expect(cert.subjectAltName).toBe(
      "DNS:custody-webhook.custody-system.svc, DNS:custody-webhook.custody-system.svc.cluster.local, " +
        "DNS:webhook.example.test, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1",
    );
    expect(cert.verify(signer.publicKey)).toBe(true);
    expect(cert.checkPrivateKey(createPrivateKey(sc.current.keyPem))).toBe(true);
    expect(sc.current.notBefore.getTime()).toBe(T0 - SERVING_BACKDATE_MS);
    expect(sc.current.notAfter.getTime()).toBe(T0 + DAY);
    expect(sc.current.serialHex).toBe(cert.serialNumber.toLowerCase());
  });

  it("renews at half its lifetime, repeatedly, with a fresh key each time, and calls onRotate", async () => {
    const { sc, clock, rotated } = setup();
    const first = sc.current;
    sc.start();
    expect(sc.renewAt).toBe(T0 + 12 * HOUR);
    await clock.advance(12 * HOUR - 1000);
    expect(rotated).toHaveLength(0);
    await clock.advance(1000);
    expect(rotated).toHaveLength(1);
    const second = rotated[0]!;
    expect(sc.current).toBe(second);
    expect(second.serialHex).not.toBe(first.serialHex);
    expect(second.keyPem).not.toBe(first.keyPem);
    expect(second.notAfter.getTime()).toBe(T0 + 12 * HOUR + DAY);
    expect(sc.renewAt).toBe(T0 + 24 * HOUR);
    await clock.advance(12 * HOUR);
    expect(rotated).toHaveLength(2);
    expect(clock.pendingTimers).toBe(1);
  });

  it("picks up a rotated CA at the next mint, and rotateNow re-arms the timer", async () => {
    const t = setup();
    t.sc.start();
    await t.clock.advance(HOUR);
    const next = ca();
    t.setCa(next);
    const minted = t.sc.rotateNow();
    expect(parse(minted).verify(next.publicKey)).toBe(true);
    expect(t.rotated).toEqual([minted]);
    expect(t.sc.renewAt).toBe(T0 + HOUR + 12 * HOUR);
    expect(t.clock.pendingTimers).toBe(1);
  });

  it("keeps the current certificate and retries when publishing fails", async () => {
    let failures = 1;
    const published: ServingCertificate[] = [];
    const t = setup({
      onRotate: (c) => {
        if (failures-- > 0) throw new Error("setSecureContext: key values mismatch");
        published.push(c);
      },
      retryMs: 30_000,
    });
    const first = t.sc.current;
    t.sc.start();
    await t.clock.advance(12 * HOUR);
    expect(t.sc.current).toBe(first);
    expect(published).toHaveLength(0);
    const err = t.lines.find((l) => l.level === "error");
    expect(err?.msg).toBe("webhook serving certificate renewal failed; retrying");
    expect(err?.fields).toMatchObject({
      retryInMs: 30_000,
      error: { message: "setSecureContext: key values mismatch" },
    });
    expect(t.lines.map((l) => JSON.stringify(l)).join("")).not.toContain("PRIVATE KEY");
    await t.clock.advance(30_000);
    expect(published).toHaveLength(1);
    expect(t.sc.current).toBe(published[0]);
  });

  it("clamps to a CA about to expire and renews at half the remaining time", async () => {
    const short = ca(HOUR * 5, T0 - HOUR); // expires at T0 + 4 h
    const t = setup({ ca: () => short });
    expect(t.sc.current.notAfter.getTime()).toBe(T0 + 4 * HOUR);
    expect(t.lines.some((l) => l.level === "warn" && /clamped/.test(l.msg))).toBe(true);
    t.sc.start();
    expect(t.sc.renewAt).toBe(T0 + 2 * HOUR);
  });

  it("waits out a renewal beyond setTimeout's ceiling instead of firing at once", async () => {
    const t = setup({ validityMs: 60 * DAY });
    // Real timers fire at once for delays past 2^31-1 ms: record what is asked of the clock.
    const delays: number[] = [];
    const arm = t.clock.setTimeout.bind(t.clock);
    t.clock.setTimeout = (fn, ms) => {
      delays.push(ms);
      return arm(fn, ms);
    };
    t.setCa(ca(90 * DAY));
    t.sc.rotateNow(); // re-mint from the long CA
    t.rotated.length = 0;
    t.sc.start();
    expect(t.sc.renewAt).toBe(T0 + 30 * DAY);
    await t.clock.advance(25 * DAY);
    expect(t.rotated).toHaveLength(0);
    await t.clock.advance(5 * DAY);
    expect(t.rotated).toHaveLength(1);
    expect(Math.max(...delays)).toBeLessThanOrEqual(2_147_483_647);
    expect(delays.slice(0, 2)).toEqual([2_147_483_647, 30 * DAY - 2_147_483_647]);
  });

  it("stops: no timer left, nothing rotates", async () => {
    const t = setup();
    t.sc.start();
    t.sc.stop();
    expect(t.clock.pendingTimers).toBe(0);
    await t.clock.advance(2 * DAY);
    expect(t.rotated).toHaveLength(0);
  });

  it("refuses names that are not RFC 1123 host names, naming the field", () => {
    expect(() => setup({ service: { name: "Custody_Webhook", namespace: "x" } })).toThrow(X509Error);
    expect(() => setup({ ipAddresses: ["localhost"] })).toThrow(/ipAddresses\[0\]/);
  });
});
