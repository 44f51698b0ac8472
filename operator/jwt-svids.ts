// Mints a task's JWT-SVIDs: one per audience in spec.audiences, plus one for
// Custody's own token endpoint (aud = the issuer), all with the same key,
// dates and `custody` claim. The reconciler records them, then writes them
// into the credential Secret beside the certificate; it refreshes them at
// half-life, as the kubelet does for projected service-account tokens.
import { randomUUID } from "node:crypto";
import type { AgentTask, ChainLink } from "../core/api/v1alpha1.ts";
import { audienceFileName, TOKEN_EXCHANGE_FILE } from "../core/jwt/audience-files.ts";
import type { JwtKey } from "../core/jwt/keys.ts";
import { custodyClaim, signJwtSvid, tokenExpiry, tokenRefreshAt } from "../core/jwt/svid.ts";
import { buildTaskSpiffeId } from "../core/spiffe.ts";

export const JWT_REFRESH_ANNOTATION = "custody.dev/jwt-svid-refresh-at";
export const JWT_KID_ANNOTATION = "custody.dev/jwt-svid-kid";

export interface JwtSvidSettings {
  readonly issuer: string;
  readonly ttlMs: number;
  /** The key that signs now (core/jwt/keys.ts signingKey). */
  readonly signing: () => JwtKey | undefined;
}

export interface MintedJwtSvids {
  /** Secret data key → token. */
  readonly files: Record<string, string>;
  readonly kid: string;
  readonly issuedAt: number;
  readonly expiresAt: number;
  readonly refreshAt: number;
  readonly tokens: Array<{ audience: string; jti: string }>;
}

export function createJwtSvidMinter(deps: {
  settings: JwtSvidSettings;
  trustDomain: string;
  getTask: (key: string) => AgentTask | undefined;
}) {
  const { settings } = deps;
  /** Whether a task gets JWT-SVIDs at all: only one that names audiences. */
  const wants = (task: AgentTask): boolean => (task.spec.audiences?.length ?? 0) > 0;

  async function mint(args: {
    task: AgentTask;
    spiffeId: string;
    chain: readonly ChainLink[];
    policyVersion: string;
    certificateNotAfter: number;
    deadline: string | undefined;
    now: number;
  }): Promise<MintedJwtSvids> {
    const { task, now } = args;
    const key = settings.signing();
    if (!key) throw new Error("no JWT signing key loaded");
    const ns = task.metadata.namespace ?? "";
    const custody = custodyClaim({
      taskUid: task.metadata.uid ?? "",
      policyVersion: args.policyVersion,
      chain: args.chain,
      spiffeIdOf: (name) => {
        if (name === task.metadata.name) return args.spiffeId;
        const ancestor = deps.getTask(`${ns}/${name}`);
        if (!ancestor) return undefined;
        return buildTaskSpiffeId({
          trustDomain: deps.trustDomain,
          namespace: ns,
          agent: ancestor.spec.agent.name,
          task: name,
        });
      },
    });
    const issuedAt = Math.floor(now / 1000) * 1000;
    const deadline = args.deadline ? Date.parse(args.deadline) : undefined;
    const expiresAt = tokenExpiry(now, settings.ttlMs, args.certificateNotAfter, deadline);
    const audiences: Array<[string, string]> = [
      [TOKEN_EXCHANGE_FILE, settings.issuer],
      ...(task.spec.audiences ?? []).map((a): [string, string] => [audienceFileName(a), a]),
    ];
    const files: Record<string, string> = {};
    const tokens: Array<{ audience: string; jti: string }> = [];
    for (const [file, audience] of audiences) {
      const jti = randomUUID();
      files[file] = await signJwtSvid(key, {
        issuer: settings.issuer,
        spiffeId: args.spiffeId,
        audience,
        issuedAt,
        expiresAt,
        jti,
        custody,
      });
      tokens.push({ audience, jti });
    }
    return {
      files,
      kid: key.kid,
      issuedAt,
      expiresAt,
      refreshAt: tokenRefreshAt(issuedAt, expiresAt),
      tokens,
    };
  }

  return { wants, mint };
}

export type JwtSvidMinter = ReturnType<typeof createJwtSvidMinter>;
