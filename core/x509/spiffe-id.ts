import { X509Error } from "./errors.ts";

/**
 * SPIFFE ID syntax (SPIFFE-ID spec §2): `spiffe://` + trust domain of
 * [a-z0-9._-] + optional path of segments [A-Za-z0-9._-], no empty, `.` or `..`
 * segment, no trailing slash, no query or fragment; at most 2048 bytes.
 */
const TRUST_DOMAIN = /^[a-z0-9._-]+$/;
const SEGMENT = /^[A-Za-z0-9._-]+$/;

export interface SpiffeId {
  readonly trustDomain: string;
  readonly path: string;
}

export function parseSpiffeId(id: string, field = "spiffeId"): SpiffeId {
  if (typeof id !== "string") throw new X509Error(field, "must be a string");
  if (id.length > 2048) throw new X509Error(field, "must be at most 2048 bytes");
  if (!id.startsWith("spiffe://"))
    throw new X509Error(field, `must start with "spiffe://" (got ${JSON.stringify(id)})`);
  const rest = id.slice("spiffe://".length);
  const slash = rest.indexOf("/");
  const trustDomain = slash === -1 ? rest : rest.slice(0, slash);
  const path = slash === -1 ? "" : rest.slice(slash);
  if (!TRUST_DOMAIN.test(trustDomain)) {
    throw new X509Error(field, `trust domain ${JSON.stringify(trustDomain)} must be non-empty [a-z0-9._-]`);
  }
  if (path !== "") {
    for (const segment of path.slice(1).split("/")) {
      if (!SEGMENT.test(segment) || segment === "." || segment === "..") {
        throw new X509Error(
          field,
          `path segment ${JSON.stringify(segment)} must be [A-Za-z0-9._-]+ and not . or ..`,
        );
      }
    }
  }
  return { trustDomain, path };
}
