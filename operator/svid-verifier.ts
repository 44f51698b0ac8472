// Verifying an agent's X.509-SVID as a client credential (token exchange,
// the decision endpoint). Verified certificates are kept by the digest of
// their chain until their notAfter: an agent, or its gateway, presents the
// same certificate on every call, and re-verifying it each time cost most of
// a request. Failures are never kept; the trust anchors are fixed for the
// process's life.
import { createHash } from "node:crypto";
import { verifySvid, X509Error } from "../core/x509/index.ts";

export type SvidCheck =
  | { readonly ok: true; readonly spiffeId: string; readonly serialHex: string }
  | { readonly ok: false; readonly kind: "trust-domain" }
  | { readonly ok: false; readonly kind: "invalid"; readonly message: string };

export function createSvidVerifier(
  trustAnchorsDer: () => readonly Uint8Array[],
  trustDomain: string,
  capacity = 10_000,
) {
  const verified = new Map<
    string,
    { spiffeId: string; serialHex: string; notBefore: number; notAfter: number }
  >();
  return (der: Uint8Array, intermediates: readonly Uint8Array[], t: number): SvidCheck => {
    const h = createHash("sha256").update(der);
    for (const i of intermediates) h.update(i);
    const key = h.digest("base64url");
    const hit = verified.get(key);
    if (hit && hit.notBefore <= t && t <= hit.notAfter) {
      return { ok: true, spiffeId: hit.spiffeId, serialHex: hit.serialHex };
    }
    try {
      const svid = verifySvid({
        certDer: der,
        intermediates: [...intermediates],
        bundle: [...trustAnchorsDer()],
        now: new Date(t),
      });
      if (svid.trustDomain !== trustDomain) return { ok: false, kind: "trust-domain" };
      if (verified.size >= capacity) verified.delete(verified.keys().next().value as string);
      verified.set(key, {
        spiffeId: svid.spiffeId,
        serialHex: svid.serialHex,
        notBefore: svid.notBefore.getTime(),
        notAfter: svid.notAfter.getTime(),
      });
      return { ok: true, spiffeId: svid.spiffeId, serialHex: svid.serialHex };
    } catch (err) {
      if (err instanceof X509Error) return { ok: false, kind: "invalid", message: err.message };
      throw err;
    }
  };
}
