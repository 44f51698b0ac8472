import { X509Error } from "./errors.ts";

/**
 * Minimal DER (X.690) writer and strict reader. Hand-written instead of a
 * schema library because the mint hot path concatenates precomputed byte
 * fragments, and decoding must reject every non-canonical encoding.
 */

export const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  UTF8_STRING: 0x0c,
  PRINTABLE_STRING: 0x13,
  IA5_STRING: 0x16,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

const utf8Decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function lengthOctets(n: number): number {
  if (n < 0x80) return 1;
  if (n < 0x100) return 2;
  if (n < 0x10000) return 3;
  if (n < 0x1000000) return 4;
  return 5;
}

function writeLength(out: Uint8Array, at: number, n: number): number {
  if (n < 0x80) {
    out[at] = n;
    return at + 1;
  }
  const octets = lengthOctets(n) - 1;
  out[at++] = 0x80 | octets;
  for (let i = octets - 1; i >= 0; i--) out[at++] = (n >>> (8 * i)) & 0xff;
  return at;
}

/** Concatenates byte strings into one new array. */
export function concat(parts: readonly Uint8Array[]): Uint8Array {
  let total = 0;
  for (const p of parts) total += p.length;
  const out = Buffer.allocUnsafe(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** One TLV whose content is the concatenation of `parts`. */
export function tlv(tag: number, ...parts: Uint8Array[]): Uint8Array {
  let contentLength = 0;
  for (const p of parts) contentLength += p.length;
  // allocUnsafe draws small buffers from a pool (much cheaper than new Uint8Array
  // on the mint hot path); every byte is written below.
  const out = Buffer.allocUnsafe(1 + lengthOctets(contentLength) + contentLength);
  out[0] = tag;
  let at = writeLength(out, 1, contentLength);
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * A copy that owns its ArrayBuffer. tlv/concat results may share Buffer's pool,
 * so anything handed to callers goes through this (their .buffer is then safe).
 */
export const owned = (b: Uint8Array): Uint8Array => new Uint8Array(b);

export const sequence = (...parts: Uint8Array[]): Uint8Array => tlv(TAG.SEQUENCE, ...parts);

/** INTEGER from a non-negative magnitude (big-endian); adds the sign octet DER needs. */
export function integerFromMagnitude(magnitude: Uint8Array): Uint8Array {
  let start = 0;
  while (start < magnitude.length - 1 && magnitude[start] === 0) start++;
  const trimmed = magnitude.subarray(start);
  if (trimmed.length === 0) return tlv(TAG.INTEGER, new Uint8Array([0]));
  return (trimmed[0]! & 0x80) !== 0
    ? tlv(TAG.INTEGER, new Uint8Array([0]), trimmed)
    : tlv(TAG.INTEGER, trimmed);
}

export function integer(n: number): Uint8Array {
  if (!Number.isSafeInteger(n) || n < 0)
    throw new RangeError(`integer: ${n} is not a non-negative safe integer`);
  const bytes: number[] = [];
  let v = n;
  do {
    bytes.unshift(v % 256);
    v = Math.floor(v / 256);
  } while (v > 0);
  return integerFromMagnitude(new Uint8Array(bytes));
}

export const utf8String = (s: string): Uint8Array => tlv(TAG.UTF8_STRING, Buffer.from(s, "utf8"));
export const octetString = (b: Uint8Array): Uint8Array => tlv(TAG.OCTET_STRING, b);
export const bitString = (b: Uint8Array, unusedBits = 0): Uint8Array =>
  tlv(TAG.BIT_STRING, new Uint8Array([unusedBits]), b);
export const contextExplicit = (n: number, ...parts: Uint8Array[]): Uint8Array => tlv(0xa0 | n, ...parts);
export const booleanTrue = new Uint8Array([TAG.BOOLEAN, 1, 0xff]);

/** OBJECT IDENTIFIER from dotted form; arcs may exceed 2^53 (2.25 UUID arcs). */
export function oid(dotted: string): Uint8Array {
  const arcs = dotted.split(".").map((a) => {
    if (!/^(0|[1-9][0-9]*)$/.test(a)) throw new RangeError(`oid: bad arc "${a}" in ${dotted}`);
    return BigInt(a);
  });
  if (arcs.length < 2 || arcs[0]! > 2n || (arcs[0]! < 2n && arcs[1]! > 39n)) {
    throw new RangeError(`oid: ${dotted} is not a valid object identifier`);
  }
  const subIds = [arcs[0]! * 40n + arcs[1]!, ...arcs.slice(2)];
  const body: number[] = [];
  for (const sub of subIds) {
    const chunk: number[] = [];
    let v = sub;
    do {
      chunk.unshift(Number(v & 0x7fn));
      v >>= 7n;
    } while (v > 0n);
    for (let i = 0; i < chunk.length - 1; i++) chunk[i]! |= 0x80;
    body.push(...chunk);
  }
  return tlv(TAG.OID, new Uint8Array(body));
}

/** Dotted form of OID content octets (for error messages and reports). */
export function oidToString(content: Uint8Array): string {
  const subs: bigint[] = [];
  let v = 0n;
  for (const b of content) {
    v = (v << 7n) | BigInt(b & 0x7f);
    if ((b & 0x80) === 0) {
      subs.push(v);
      v = 0n;
    }
  }
  const first = subs[0] ?? 0n;
  const head = first < 80n ? [first / 40n, first % 40n] : [2n, first - 80n];
  return [...head, ...subs.slice(1)].join(".");
}

const pad2 = (n: number): string => (n < 10 ? "0" : "") + n;

/** RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; whole seconds, Zulu. */
export function time(date: Date): Uint8Array {
  const y = date.getUTCFullYear();
  const rest =
    pad2(date.getUTCMonth() + 1) +
    pad2(date.getUTCDate()) +
    pad2(date.getUTCHours()) +
    pad2(date.getUTCMinutes()) +
    pad2(date.getUTCSeconds()) +
    "Z";
  if (y >= 1950 && y < 2050) return tlv(TAG.UTC_TIME, Buffer.from(pad2(y % 100) + rest, "latin1"));
  if (y < 0 || y > 9999) throw new RangeError(`time: year ${y} cannot be encoded`);
  return tlv(TAG.GENERALIZED_TIME, Buffer.from(String(y).padStart(4, "0") + rest, "latin1"));
}

// ---------------------------------------------------------------- reading

export interface Element {
  readonly tag: number;
  /** Content octets. */
  readonly content: Uint8Array;
  /** The whole TLV, header included. */
  readonly raw: Uint8Array;
}

const tagName = (tag: number): string => {
  for (const [name, value] of Object.entries(TAG)) if (value === tag) return name;
  return `0x${tag.toString(16).padStart(2, "0")}`;
};

/** `a` + `b` as a field path: `a.b`, `a[0]`, or `a` when `b` is empty. */
export function joinField(a: string, b: string): string {
  if (!b) return a;
  return b.startsWith("[") ? a + b : `${a}.${b}`;
}

/** Sequential strict reader over the content of one constructed element. */
export class DerReader {
  readonly bytes: Uint8Array;
  readonly field: string;
  pos = 0;

  constructor(bytes: Uint8Array, field: string) {
    this.bytes = bytes;
    this.field = field;
  }

  fail(what: string, rule: string): never {
    throw new X509Error(joinField(this.field, what), rule);
  }

  atEnd(): boolean {
    return this.pos >= this.bytes.length;
  }

  peekTag(): number | undefined {
    return this.bytes[this.pos];
  }

  /** Reads the next element, enforcing DER definite minimal lengths. */
  next(what: string): Element {
    const b = this.bytes;
    const start = this.pos;
    if (start >= b.length) this.fail(what, "missing (unexpected end of data)");
    const tag = b[start]!;
    if ((tag & 0x1f) === 0x1f) this.fail(what, "multi-byte tags are not supported");
    if (start + 1 >= b.length) this.fail(what, "truncated length");
    const first = b[start + 1]!;
    let length: number;
    let at = start + 2;
    if (first < 0x80) {
      length = first;
    } else {
      const octets = first & 0x7f;
      if (octets === 0) this.fail(what, "indefinite length is not DER");
      if (octets > 4) this.fail(what, "length too large");
      if (at + octets > b.length) this.fail(what, "truncated length");
      if (b[at] === 0) this.fail(what, "length is not minimally encoded");
      length = 0;
      for (let i = 0; i < octets; i++) length = length * 256 + b[at + i]!;
      if (length < 0x80) this.fail(what, "length is not minimally encoded");
      at += octets;
    }
    if (at + length > b.length) this.fail(what, `truncated: needs ${length} content bytes`);
    this.pos = at + length;
    return { tag, content: b.subarray(at, at + length), raw: b.subarray(start, at + length) };
  }

  expect(tag: number, what: string): Element {
    const tagHere = this.peekTag();
    if (tagHere !== tag) {
      this.fail(
        what,
        tagHere === undefined
          ? `missing, expected ${tagName(tag)}`
          : `expected ${tagName(tag)}, found ${tagName(tagHere)}`,
      );
    }
    return this.next(what);
  }

  optional(tag: number, what: string): Element | undefined {
    return this.peekTag() === tag ? this.next(what) : undefined;
  }

  /** Opens a constructed element as a child reader named `field.what`. */
  enter(tag: number, what: string): DerReader {
    return new DerReader(this.expect(tag, what).content, joinField(this.field, what));
  }

  finish(): void {
    if (!this.atEnd()) this.fail("", `${this.bytes.length - this.pos} unexpected trailing byte(s)`);
  }

  utf8(what: string): string {
    const { content } = this.expect(TAG.UTF8_STRING, what);
    try {
      return utf8Decoder.decode(content);
    } catch {
      return this.fail(what, "is not valid UTF-8");
    }
  }

  /** Non-negative INTEGER that fits in 31 bits (versions, depths, path lengths). */
  smallUnsigned(what: string): number {
    const { content } = this.expect(TAG.INTEGER, what);
    const magnitude = checkInteger(content, (rule) => this.fail(what, rule));
    if (magnitude.negative) this.fail(what, "must not be negative");
    if (content.length > 4) this.fail(what, "must be below 2^31");
    let n = 0;
    for (const byte of content) n = n * 256 + byte;
    return n;
  }

  boolean(what: string): boolean {
    const { content } = this.expect(TAG.BOOLEAN, what);
    if (content.length !== 1) this.fail(what, "BOOLEAN must be one octet");
    if (content[0] === 0xff) return true;
    if (content[0] === 0x00) return false;
    return this.fail(what, "BOOLEAN must be 0x00 or 0xff in DER");
  }

  time(what: string): Date {
    const el = this.next(what);
    return parseTime(el, (rule) => this.fail(what, rule));
  }
}

/** Checks INTEGER content octets are minimal; reports the sign. */
export function checkInteger(content: Uint8Array, fail: (rule: string) => never): { negative: boolean } {
  if (content.length === 0) fail("INTEGER has no content octets");
  if (content.length > 1) {
    const a = content[0]!;
    const b = content[1]!;
    if ((a === 0x00 && (b & 0x80) === 0) || (a === 0xff && (b & 0x80) !== 0)) {
      fail("INTEGER is not minimally encoded");
    }
  }
  return { negative: (content[0]! & 0x80) !== 0 };
}

const latin1 = new TextDecoder("latin1");

function parseTime(el: Element, fail: (rule: string) => never): Date {
  const s = latin1.decode(el.content);
  let year: number;
  let rest: string;
  if (el.tag === TAG.UTC_TIME) {
    if (!/^\d{12}Z$/.test(s)) fail("UTCTime must be YYMMDDHHMMSSZ");
    const yy = Number(s.slice(0, 2));
    year = yy >= 50 ? 1900 + yy : 2000 + yy;
    rest = s.slice(2);
  } else if (el.tag === TAG.GENERALIZED_TIME) {
    if (!/^\d{14}Z$/.test(s)) fail("GeneralizedTime must be YYYYMMDDHHMMSSZ");
    year = Number(s.slice(0, 4));
    rest = s.slice(4);
  } else {
    return fail(`expected UTCTime or GeneralizedTime, found ${tagName(el.tag)}`);
  }
  const [mo, d, h, mi, se] = [0, 2, 4, 6, 8].map((i) => Number(rest.slice(i, i + 2))) as [
    number,
    number,
    number,
    number,
    number,
  ];
  const ms = Date.UTC(year, mo - 1, d, h, mi, se);
  const date = new Date(ms);
  if (
    date.getUTCFullYear() !== year ||
    date.getUTCMonth() !== mo - 1 ||
    date.getUTCDate() !== d ||
    date.getUTCHours() !== h ||
    date.getUTCMinutes() !== mi ||
    date.getUTCSeconds() !== se
  ) {
    fail(`${s} is not a valid calendar time`);
  }
  return date;
}

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function toHex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex");
}
