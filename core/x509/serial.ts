import { TAG, tlv, toHex } from "./der.ts";
import { X509Error } from "./errors.ts";

export interface EncodedSerial {
  /** INTEGER content octets (minimal). */
  readonly content: Uint8Array;
  readonly tlv: Uint8Array;
  readonly hex: string;
}

/**
 * RFC 5280 §4.1.2.2: a positive INTEGER of at most 20 octets. The input is the
 * big-endian magnitude; its first bit must be clear so that it is positive as
 * given (20 octets stay 20 octets). Redundant leading zero octets are dropped.
 */
export function encodeSerial(serial: Uint8Array, field = "serial"): EncodedSerial {
  if (!(serial instanceof Uint8Array)) throw new X509Error(field, "must be a Uint8Array");
  if (serial.length === 0 || serial.length > 20) {
    throw new X509Error(field, `must be 1..20 octets (got ${serial.length})`);
  }
  if ((serial[0]! & 0x80) !== 0)
    throw new X509Error(field, "first bit must be clear (serial must be positive)");
  let start = 0;
  while (start < serial.length - 1 && serial[start] === 0 && (serial[start + 1]! & 0x80) === 0) start++;
  const content = serial.slice(start);
  if (content.length === 1 && content[0] === 0) throw new X509Error(field, "must be positive (got zero)");
  return { content, tlv: tlv(TAG.INTEGER, content), hex: toHex(content) };
}

/** Turns random bytes (e.g. 16 from crypto.randomBytes) into a valid positive serial. */
export function serialFromRandom(random: Uint8Array): Uint8Array {
  if (random.length < 8 || random.length > 20) throw new X509Error("random", "must be 8..20 bytes");
  const s = random.slice();
  s[0] = (s[0]! & 0x7f) | 0x40; // keep the length fixed and the value positive
  return s;
}
