import { X509Error } from "./errors.ts";

/** RFC 7468 textual encoding: base64 in 64-character lines. */
export function toPem(label: string, der: Uint8Array): string {
  const b64 = Buffer.from(der.buffer, der.byteOffset, der.byteLength).toString("base64");
  let body = "";
  for (let i = 0; i < b64.length; i += 64) body += b64.slice(i, i + 64) + "\n";
  return `-----BEGIN ${label}-----\n${body}-----END ${label}-----\n`;
}

export interface PemBlock {
  readonly label: string;
  readonly der: Uint8Array;
}

const BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END ([A-Z0-9 ]+)-----/g;

/** All PEM blocks in `text`, in order. Text between blocks is ignored (RFC 7468 §2). */
export function fromPem(text: string, field = "pem"): PemBlock[] {
  const blocks: PemBlock[] = [];
  for (const m of text.matchAll(BLOCK)) {
    const [, begin, body, end] = m as unknown as [string, string, string, string];
    if (begin !== end) throw new X509Error(field, `BEGIN ${begin} does not match END ${end}`);
    const compact = body.replace(/\s+/g, "");
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(compact) || compact.length % 4 !== 0) {
      throw new X509Error(field, `${begin} block is not valid base64`);
    }
    blocks.push({ label: begin, der: new Uint8Array(Buffer.from(compact, "base64")) });
  }
  return blocks;
}

/** DER of every CERTIFICATE block; errors when there is none. */
export function certificatesFromPem(text: string, field = "certPem"): Uint8Array[] {
  const certs = fromPem(text, field)
    .filter((b) => b.label === "CERTIFICATE")
    .map((b) => b.der);
  if (certs.length === 0) throw new X509Error(field, "contains no CERTIFICATE block");
  return certs;
}
