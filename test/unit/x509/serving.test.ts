import { spawnSync } from "node:child_process";
import { generateKeyPairSync, X509Certificate as NodeX509, randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import tls from "node:tls";
import * as x509 from "@peculiar/x509";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { type CertificateAuthority, loadCa } from "../../../core/x509/ca.ts";
import { X509Error } from "../../../core/x509/errors.ts";
import { generateLeafKeyPair } from "../../../core/x509/mint.ts";
import { serialFromRandom } from "../../../core/x509/serial.ts";
import {
  ipAddressOctets,
  type MintedServingCert,
  mintServingCert,
  parseIPv6,
  type ServingCertInput,
} from "../../../core/x509/serving.ts";
import { HOUR, NOW, OPENSSL, opensslChain, rootCa, tempDir } from "./fixtures.ts";

const SERVICE = "custody-webhook.custody-system.svc";

function mint(overrides: Partial<ServingCertInput> = {}, ca: CertificateAuthority = rootCa()) {
  const keys = generateLeafKeyPair();
  const minted = mintServingCert({
    ca,
    subjectPublicKey: keys.publicKeySpki,
    dnsNames: [SERVICE, `${SERVICE}.cluster.local`],
    ipAddresses: ["127.0.0.1", "::1"],
    serial: serialFromRandom(randomBytes(16)),
    notBefore: NOW,
    notAfter: new Date(NOW.getTime() + HOUR),
    ...overrides,
  });
  return { ca, keys, minted };
}

const epoch = (d: Date) => String(Math.floor(d.getTime() / 1000));

function strictVerify(dir: string, args: string[]) {
  const r = spawnSync(OPENSSL, ["verify", "-x509_strict", ...args], { cwd: dir, encoding: "utf8" });
  return { status: r.status, out: r.stdout + r.stderr };
}

function thrown(fn: () => unknown): X509Error {
  try {
    fn();
  } catch (e) {
    if (e instanceof X509Error) return e;
    throw e;
  }
  throw new Error("expected an X509Error");
}

describe("mintServingCert profile", () => {
  it("has DNS and IP SANs, no URI, serverAuth only, CA:FALSE, SKI/AKI, and the CA as issuer", () => {
    const serial = new Uint8Array([0x0a, 1, 2, 3, 4, 5, 6, 7]);
    const { ca, keys, minted } = mint({ serial });
    const cert = new NodeX509(minted.pem);
    const caCert = new NodeX509(ca.certPem);

    expect(minted.serialHex).toBe("0a01020304050607");
    expect(cert.subjectAltName).toBe(
      `DNS:${SERVICE}, DNS:${SERVICE}.cluster.local, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1`,
    );
    expect(cert.subject).toBe(`O=Custody\nCN=${SERVICE}`);
    expect(cert.issuer).toBe(caCert.subject);
    expect(cert.ca).toBe(false);
    expect(cert.keyUsage).toEqual(["1.3.6.1.5.5.7.3.1"]);
    expect(cert.checkIssued(caCert)).toBe(true);
    expect(cert.verify(ca.publicKey)).toBe(true);
    expect(cert.checkHost(SERVICE)).toBe(SERVICE);
    expect(cert.checkHost("other.custody-system.svc")).toBeUndefined();
    expect(cert.checkIP("127.0.0.1")).toBe("127.0.0.1");
    expect(cert.checkIP("::1")).toBe("::1");
    expect(cert.checkIP("127.0.0.2")).toBeUndefined();

    const p = new x509.X509Certificate(minted.der);
    expect(new Uint8Array(p.publicKey.rawData)).toEqual(keys.publicKeySpki);
    expect(p.extensions.map((e) => [e.type, e.critical])).toEqual([
      ["2.5.29.19", true],
      ["2.5.29.15", true],
      ["2.5.29.37", false],
      ["2.5.29.14", false],
      ["2.5.29.35", false],
      ["2.5.29.17", false],
    ]);
    expect(p.getExtension(x509.BasicConstraintsExtension)!.ca).toBe(false);
    expect(p.getExtension(x509.KeyUsagesExtension)!.usages).toBe(x509.KeyUsageFlags.digitalSignature);
    const aki = p.getExtension(x509.AuthorityKeyIdentifierExtension)!;
    expect(aki.keyId).toBe(Buffer.from(ca.subjectKeyId).toString("hex"));
    const san = p.getExtension(x509.SubjectAlternativeNameExtension)!;
    expect(san.names.items.map((n) => n.type)).toEqual(["dns", "dns", "ip", "ip"]);
    expect(p.notBefore.toISOString()).toBe(NOW.toISOString());
    expect(minted.notAfter.toISOString()).toBe(new Date(NOW.getTime() + HOUR).toISOString());
    expect(minted.chainPem).toBe(minted.pem); // a root CA adds no intermediates
  });

  it("uses O=Custody alone when there is no DNS name or the first is too long for a CN", () => {
    expect(new NodeX509(mint({ dnsNames: [] }).minted.pem).subject).toBe("O=Custody");
    const long = `${"a".repeat(60)}.example`;
    const cert = new NodeX509(mint({ dnsNames: [long] }).minted.pem);
    expect(cert.subject).toBe("O=Custody");
    expect(cert.checkHost(long)).toBe(long);
  });

  it("passes openssl verify -x509_strict as sslserver and fails as sslclient", () => {
    const { ca, minted } = mint();
    const dir = tempDir();
    writeFileSync(join(dir, "ca.pem"), ca.certPem);
    writeFileSync(join(dir, "leaf.pem"), minted.pem);
    const at = epoch(new Date(NOW.getTime() + 60_000));
    expect(
      strictVerify(dir, ["-attime", at, "-purpose", "sslserver", "-CAfile", "ca.pem", "leaf.pem"]),
    ).toEqual({ status: 0, out: "leaf.pem: OK\n" });
    const client = strictVerify(dir, [
      "-attime",
      at,
      "-purpose",
      "sslclient",
      "-CAfile",
      "ca.pem",
      "leaf.pem",
    ]);
    expect(client.status).not.toBe(0);
    expect(client.out).toMatch(/unsuitable certificate purpose/);
    const other = strictVerify(dir, ["-attime", at, "-CAfile", "leaf.pem", "leaf.pem"]);
    expect(other.status).not.toBe(0);
  });

  it("chains through a user-supplied intermediate", () => {
    const chain = opensslChain("ec");
    const ca = loadCa({
      certPem: chain.intermediatePem,
      keyPem: chain.intermediateKeyPem,
      chainPem: chain.rootPem,
    });
    const now = new Date();
    const { minted } = mint({ notBefore: now, notAfter: new Date(now.getTime() + HOUR) }, ca);
    expect(minted.chainPem).toBe(minted.pem + chain.intermediatePem.replace(/\r/g, ""));
    const dir = tempDir();
    writeFileSync(join(dir, "root.pem"), chain.rootPem);
    writeFileSync(join(dir, "chain.pem"), minted.chainPem);
    writeFileSync(join(dir, "leaf.pem"), minted.pem);
    expect(
      strictVerify(dir, [
        "-purpose",
        "sslserver",
        "-CAfile",
        "root.pem",
        "-untrusted",
        "chain.pem",
        "leaf.pem",
      ]),
    ).toEqual({ status: 0, out: "leaf.pem: OK\n" });
  });
});

describe("IP address encoding", () => {
  it.each([
    ["127.0.0.1", "7f000001"],
    ["0.0.0.0", "00000000"],
    ["255.255.255.255", "ffffffff"],
    ["::", "00".repeat(16)],
    ["::1", `${"00".repeat(15)}01`],
    ["2001:db8::8a2e:370:7334", "20010db8000000000000" + "8a2e03707334"],
    ["2001:DB8:0:0:1:0:0:1", "20010db8000000000001000000000001"],
    ["::ffff:192.0.2.1", "00000000000000000000ffffc0000201"],
    ["fe80::", `fe80${"00".repeat(14)}`],
    ["1:2:3:4:5:6:7::", "00010002000300040005000600070000"],
  ])("%s", (text, hex) => {
    expect(Buffer.from(ipAddressOctets(text, "ip")).toString("hex")).toBe(hex);
  });

  it.each([
    "256.0.0.1",
    "01.2.3.4",
    "1.2.3",
    "1.2.3.4.5",
    "1::2::3",
    ":1",
    "1:",
    "1:2:3:4:5:6:7:8:9",
    "1:2:3:4:5:6:7:8::",
    "12345::",
    "fe80::1%eth0",
    "[::1]",
    "1.2.3.4::",
    "::1.2.3",
    "localhost",
    "",
  ])("refuses %j naming the field", (text) => {
    const e = thrown(() => ipAddressOctets(text, "ipAddresses[3]"));
    expect(e.field).toBe("ipAddresses[3]");
  });

  it("round-trips every IPv6 address through its compressed and full text forms", () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), (bytes) => {
        const groups = Array.from({ length: 8 }, (_, i) =>
          ((bytes[2 * i]! << 8) | bytes[2 * i + 1]!).toString(16),
        );
        const full = groups.join(":");
        // The WHATWG URL parser serialises IPv6 hosts in RFC 5952 compressed form.
        const compressed = new URL(`http://[${full}]/`).hostname.slice(1, -1);
        expect(parseIPv6(full)).toEqual(bytes);
        expect(parseIPv6(compressed)).toEqual(bytes);
      }),
    );
  });
});

describe("mintServingCert input rules", () => {
  const cases: Array<[string, Partial<ServingCertInput>, string, RegExp]> = [
    ["no SAN at all", { dnsNames: [], ipAddresses: [] }, "dnsNames", /at least one/],
    ["upper case", { dnsNames: ["Webhook.svc"] }, "dnsNames[0]", /lower case/],
    ["underscore", { dnsNames: ["a_b.svc"] }, "dnsNames[0]", /RFC 1123/],
    ["leading hyphen", { dnsNames: ["ok", "-a.svc"] }, "dnsNames[1]", /RFC 1123/],
    ["wildcard", { dnsNames: ["*.svc"] }, "dnsNames[0]", /no wildcards/],
    ["trailing dot", { dnsNames: ["a.svc."] }, "dnsNames[0]", /RFC 1123/],
    ["64-character label", { dnsNames: [`${"a".repeat(64)}.svc`] }, "dnsNames[0]", /1-63/],
    [
      "254 characters",
      { dnsNames: [Array(4).fill("a".repeat(63)).join(".").slice(0, 254)] },
      "dnsNames[0]",
      /253/,
    ],
    ["IP among DNS names", { dnsNames: ["127.0.0.1"] }, "dnsNames[0]", /ipAddresses/],
    ["not a string", { dnsNames: [42 as unknown as string] }, "dnsNames[0]", /string/],
    ["duplicate DNS", { dnsNames: ["a.svc", "a.svc"] }, "dnsNames[1]", /twice/],
    ["duplicate IP (two spellings)", { ipAddresses: ["::1", "0:0:0:0:0:0:0:1"] }, "ipAddresses[1]", /twice/],
    ["bad IP", { ipAddresses: ["300.1.1.1"] }, "ipAddresses[0]", /IPv4/],
    [
      "notAfter before notBefore",
      { notAfter: new Date(NOW.getTime() - 1000) },
      "notAfter",
      /after notBefore/,
    ],
    [
      "notAfter beyond the CA",
      { notAfter: new Date(NOW.getTime() + 365 * 24 * HOUR) },
      "notAfter",
      /CA's notAfter/,
    ],
    ["bad serial", { serial: new Uint8Array([0x80, 1]) }, "serial", /positive/],
  ];
  it.each(cases)("%s", (_, overrides, field, rule) => {
    const e = thrown(() => mint(overrides));
    expect(e.field).toBe(field);
    expect(e.message).toMatch(rule);
  });

  it("refuses a non-P-256 key", () => {
    const { publicKey } = generateKeyPairSync("ec", { namedCurve: "P-384" });
    expect(thrown(() => mint({ subjectPublicKey: publicKey })).field).toBe("subjectPublicKey");
  });
});

describe("TLS handshake with the Custody CA as the only trust anchor", () => {
  async function serve(minted: MintedServingCert, keyPem: string): Promise<tls.Server> {
    const server = tls.createServer({ cert: minted.chainPem, key: keyPem, minVersion: "TLSv1.2" }, (s) =>
      s.end("ok"),
    );
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    return server;
  }
  function connect(port: number, caPem: string, servername?: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const s = tls.connect({ host: "127.0.0.1", port, ca: [caPem], ...(servername ? { servername } : {}) });
      let body = "";
      s.on("data", (d: Buffer) => {
        body += d.toString();
      });
      s.on("end", () => resolve(body));
      s.on("error", reject);
    });
  }

  it("succeeds for a DNS SAN and for 127.0.0.1, fails for another name and another CA", async () => {
    const now = new Date();
    const ca = rootCa(now);
    const { keys, minted } = mint(
      { notBefore: new Date(now.getTime() - 60_000), notAfter: new Date(now.getTime() + HOUR) },
      ca,
    );
    const server = await serve(minted, keys.privateKeyPem);
    try {
      const { port } = server.address() as AddressInfo;
      expect(await connect(port, ca.certPem, SERVICE)).toBe("ok");
      expect(await connect(port, ca.certPem)).toBe("ok"); // no SNI: checked against IP SAN 127.0.0.1
      await expect(connect(port, ca.certPem, "elsewhere.custody-system.svc")).rejects.toMatchObject({
        code: "ERR_TLS_CERT_ALTNAME_INVALID",
      });
      await expect(connect(port, rootCa(now).certPem, SERVICE)).rejects.toMatchObject({
        code: "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
      });
    } finally {
      server.close();
    }
  });
});
