/**
 * JWT-SVIDs (SPIFFE JWT-SVID standard) and the `custody` claim they carry.
 * Pure: the clock, the jti and the signing key are passed in.
 *
 * Header {alg, kid, typ: "JWT"}; claims sub (the task's SPIFFE ID), aud,
 * exp, iat, jti, iss, and `custody`: the task UID, policy version, chain
 * digest and the delegation chain root first, the same values as the
 * certificate's delegation extension (docs/jwt-svid.md).
 */
import { SignJWT } from "jose";
import type { ChainLink } from "../api/v1alpha1.ts";
import { chainDigest } from "../delegation.ts";
import type { JwtKey } from "./keys.ts";

/** The default and longest lifetime of a JWT-SVID and of an on-behalf-of token. */
export const DEFAULT_JWT_TTL_MS = 5 * 60_000;
export const MAX_JWT_TTL_MS = 60 * 60_000;
export const MIN_JWT_TTL_MS = 60_000;
/** The OBO token's lifetime cap (the floor: at most 5 minutes). */
export const MAX_OBO_TTL_MS = 5 * 60_000;

/** One hop of the chain as tokens carry it: kind in the certificate extension's vocabulary. */
export interface ChainHop {
  readonly kind: "user" | "group" | "serviceaccount" | "workflow" | "agent";
  readonly name: string;
  /** Only for agents: the task's SPIFFE ID. */
  readonly spiffeId?: string;
}

export interface CustodyClaim {
  readonly taskUid: string;
  readonly policyVersion: string;
  /** SHA-256 of the canonical chain (the certificate extension's chainDigest), hex. */
  readonly chainDigest: string;
  /** Root first: the delegating principal, then each agent down to this one. */
  readonly chain: readonly ChainHop[];
}

const HOP_KIND: Record<ChainLink["kind"], ChainHop["kind"]> = {
  User: "user",
  Group: "group",
  ServiceAccount: "serviceaccount",
  Workflow: "workflow",
  AgentTask: "agent",
};

/**
 * The `custody` claim for a chain (root first, the task last). `spiffeIdOf`
 * names each AgentTask hop's SPIFFE ID; an unknown one makes this throw, so
 * no token carries a partial chain.
 */
export function custodyClaim(args: {
  taskUid: string;
  policyVersion: string;
  chain: readonly ChainLink[];
  spiffeIdOf: (taskName: string) => string | undefined;
}): CustodyClaim {
  const chain = args.chain.map((link): ChainHop => {
    if (link.kind !== "AgentTask") return { kind: HOP_KIND[link.kind], name: link.name };
    const spiffeId = args.spiffeIdOf(link.name);
    if (!spiffeId) throw new Error(`no SPIFFE ID known for chain hop AgentTask ${link.name}`);
    return { kind: "agent", name: link.name, spiffeId };
  });
  return {
    taskUid: args.taskUid,
    policyVersion: args.policyVersion,
    chainDigest: chainDigest(args.chain).toString("hex"),
    chain,
  };
}

/**
 * When a token made at `now` must expire: its lifetime, but never past the
 * task's certificate or deadline. Whole seconds (JWT NumericDate).
 */
export function tokenExpiry(now: number, ttlMs: number, notAfter: number, deadline?: number): number {
  const exp = Math.min(now + ttlMs, notAfter, deadline ?? Number.POSITIVE_INFINITY);
  return Math.floor(exp / 1000) * 1000;
}

/** When a token should be replaced: at half its life, as the kubelet does for projected tokens. */
export function tokenRefreshAt(iat: number, exp: number): number {
  return iat + Math.floor((exp - iat) / 2);
}

export interface JwtSvidInput {
  readonly issuer: string;
  readonly spiffeId: string;
  readonly audience: string;
  /** Milliseconds since the epoch. */
  readonly issuedAt: number;
  readonly expiresAt: number;
  readonly jti: string;
  readonly custody: CustodyClaim;
}

/** Signs a JWT-SVID with jose. */
export function signJwtSvid(key: JwtKey, input: JwtSvidInput): Promise<string> {
  return new SignJWT({ custody: input.custody as unknown as Record<string, unknown> })
    .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: "JWT" })
    .setIssuer(input.issuer)
    .setSubject(input.spiffeId)
    .setAudience(input.audience)
    .setIssuedAt(Math.floor(input.issuedAt / 1000))
    .setExpirationTime(Math.floor(input.expiresAt / 1000))
    .setJti(input.jti)
    .sign(key.privateKey);
}
