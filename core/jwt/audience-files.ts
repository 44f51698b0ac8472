// Where each audience's JWT-SVID lives in the credential Secret (and so in
// the mounted volume). Its own module: the API schema checks the names
// without loading the signing code.
import { createHash } from "node:crypto";

/**
 * The credential Secret key (and so the mounted file name) of an audience's
 * token: `jwt-svid.` and the audience with every character outside
 * [A-Za-z0-9.-] written `_`. Two audiences of one task must not map to one
 * name: the webhook refuses such a spec (rule audience-file-names).
 */
export function audienceFileName(audience: string): string {
  const name = audience.replace(/[^A-Za-z0-9.-]/g, "_");
  // Secret keys are at most 253 characters: a long audience keeps its
  // readable start and a digest of the whole.
  if (name.length <= MAX_FILE_STEM) return `jwt-svid.${name}`;
  const digest = createHash("sha256").update(audience, "utf8").digest("hex").slice(0, 16);
  return `jwt-svid.${name.slice(0, MAX_FILE_STEM - 17)}.${digest}`;
}
const MAX_FILE_STEM = 200;

/** The token for Custody's own token endpoint (RFC 8693 subject token): aud is the issuer. */
export const TOKEN_EXCHANGE_FILE = "jwt-svid.token-exchange";

/** Indexes of audiences whose file names collide with an earlier one's (or the reserved name). */
export function collidingAudiences(audiences: readonly string[]): number[] {
  const seen = new Set<string>([TOKEN_EXCHANGE_FILE]);
  const out: number[] = [];
  audiences.forEach((a, i) => {
    const f = audienceFileName(a);
    if (seen.has(f)) out.push(i);
    seen.add(f);
  });
  return out;
}
