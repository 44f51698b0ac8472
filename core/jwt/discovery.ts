/**
 * What relying parties fetch: the OpenID Provider metadata (OpenID Connect
 * Discovery 1.0 §3, the fields a JWT validator reads) and the JWKS. Pure.
 */

import { TOKEN_EXCHANGE_GRANT } from "./exchange.ts";
import { JWT_ALGORITHMS, type JwtKey, publicJwk } from "./keys.ts";

export const DISCOVERY_PATH = "/.well-known/openid-configuration";
export const JWKS_PATH = "/keys";
export const TOKEN_PATH = "/token";

/** The issuer URL without a trailing slash, joined with a path. */
export function endpointUrl(issuer: string, path: string): string {
  return `${issuer.replace(/\/+$/, "")}${path}`;
}

/**
 * `tokenEndpoint` may differ from the issuer's host: discovery and the JWKS
 * can sit behind a public proxy while token exchange, which needs the
 * agent's client certificate end to end, is reached directly.
 */
export function discoveryDocument(
  issuer: string,
  tokenEndpoint = endpointUrl(issuer, TOKEN_PATH),
): Record<string, unknown> {
  return {
    issuer,
    jwks_uri: endpointUrl(issuer, JWKS_PATH),
    token_endpoint: tokenEndpoint,
    grant_types_supported: [TOKEN_EXCHANGE_GRANT],
    token_endpoint_auth_methods_supported: ["tls_client_auth"],
    tls_client_certificate_bound_access_tokens: false,
    // Required by OpenID Discovery; Custody issues no ID tokens to browsers.
    response_types_supported: ["id_token"],
    subject_types_supported: ["public"],
    id_token_signing_alg_values_supported: [...JWT_ALGORITHMS],
    token_endpoint_auth_signing_alg_values_supported: [...JWT_ALGORITHMS],
  };
}

/** The JWKS: every published key with `use: sig`, its `alg` and `kid`. */
export function jwksDocument(keys: readonly JwtKey[]): { keys: Record<string, string>[] } {
  return { keys: keys.map((k) => publicJwk(k, "sig")) };
}
