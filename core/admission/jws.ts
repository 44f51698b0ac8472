/**
 * Compact JWS (RFC 7515) with ES256 over node:crypto, for the records Custody
 * signs at admission (requester records, workload stamps). Synchronous and
 * small on purpose: the webhook signs on every admitted AgentTask and workload,
 * and the operator verifies on every issuance.
 *
 * The protected header is fixed to {alg, kid, typ}; `typ` names what the
 * token is, so a stamp can never be replayed as a requester record (or the
 * reverse) even though one key signs both.
 */
import { ValidationError } from "../errors.ts";
import {
  decodeBase64url,
  encodeBase64url,
  type KeyRing,
  type Signer,
  verifyEs256,
} from "../provenance/sign.ts";

/** Upper bound on a token we parse at all (annotations are small; this is ample). */
export const MAX_JWS_LENGTH = 16 * 1024;

export function signJws(signer: Signer, typ: string, payload: unknown): string {
  const header = encodeBase64url(Buffer.from(JSON.stringify({ alg: "ES256", kid: signer.kid, typ }), "utf8"));
  const body = encodeBase64url(Buffer.from(JSON.stringify(payload), "utf8"));
  const input = `${header}.${body}`;
  return `${input}.${encodeBase64url(signer.sign(Buffer.from(input, "ascii")))}`;
}

/**
 * Verifies a compact JWS against the ring and returns its JSON payload.
 * Throws ValidationError(field, rule) naming why it does not verify.
 */
export function verifyJws(token: unknown, keys: KeyRing, typ: string, field: string): unknown {
  const fail = (rule: string, message: string): never => {
    throw new ValidationError(field, rule, `${field}: ${message} (rule ${rule})`);
  };
  if (typeof token !== "string" || token.length === 0) return fail("present", "is missing");
  if (token.length > MAX_JWS_LENGTH) return fail("max-length", `is longer than ${MAX_JWS_LENGTH} characters`);
  const parts = token.split(".");
  if (parts.length !== 3) return fail("compact-jws", "is not a compact JWS (header.payload.signature)");
  const [h, p, s] = parts as [string, string, string];
  const headerBytes = decodeBase64url(h);
  const payloadBytes = decodeBase64url(p);
  const signature = decodeBase64url(s);
  if (!headerBytes || !payloadBytes || !signature)
    return fail("base64url", "has a part that is not base64url");
  const header = parseJson(headerBytes) as {
    alg?: unknown;
    kid?: unknown;
    typ?: unknown;
    crit?: unknown;
  } | null;
  if (!header || typeof header !== "object") return fail("header", "has a header that is not a JSON object");
  if (header.alg !== "ES256") return fail("alg", "must be signed with ES256");
  if (header.typ !== typ) return fail("typ", `must have typ ${typ}`);
  if (header.crit !== undefined) return fail("crit", "must not carry critical header parameters");
  const key = typeof header.kid === "string" ? keys.get(header.kid) : undefined;
  if (!key) return fail("kid", "is signed by a key Custody does not know");
  if (!verifyEs256(key, Buffer.from(`${h}.${p}`, "ascii"), signature))
    return fail("signature", "has a signature that does not verify");
  const payload = parseJson(payloadBytes);
  if (payload === null || typeof payload !== "object" || Array.isArray(payload))
    return fail("payload", "has a payload that is not a JSON object");
  return payload;
}

function parseJson(bytes: Uint8Array): unknown {
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    return null;
  }
}
