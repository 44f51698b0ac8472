// TokenReview: "who does this bearer token belong to?", answered by the API
// server's authenticators. The token must be bound to our audience (the
// identity endpoint's issuer), so a token meant for the API server or for
// another service cannot be replayed here. Answers are memoized briefly by
// the token's digest (never the token itself): a user for ttlMs, a refusal
// for at most 5 s; an error (the API server unreachable) is not memoized.
import { createHash } from "node:crypto";
import type { KubeRest } from "./rest.ts";

export interface AuthenticatedUser {
  readonly username: string;
  readonly uid?: string;
  readonly groups: readonly string[];
}

export function createTokenReviewer(
  rest: KubeRest,
  audiences: readonly string[],
  ttlMs = 10_000,
  capacity = 10_000,
) {
  const memo = new Map<string, { user: AuthenticatedUser; until: number }>();
  // Refused tokens are remembered briefly too: a caller retrying a bad token
  // must not turn each request into a TokenReview.
  const refused = new Map<string, number>();
  return async (token: string): Promise<AuthenticatedUser | undefined> => {
    const key = createHash("sha256").update(token).digest("base64url");
    const now = Date.now();
    const hit = memo.get(key);
    if (hit && hit.until > now) return hit.user;
    if ((refused.get(key) ?? 0) > now) return undefined;
    const res = await rest.post<{
      status?: {
        authenticated?: boolean;
        audiences?: string[];
        user?: { username?: string; uid?: string; groups?: string[] };
        error?: string;
      };
    }>("/apis/authentication.k8s.io/v1/tokenreviews", {
      apiVersion: "authentication.k8s.io/v1",
      kind: "TokenReview",
      spec: { token, audiences: [...audiences] },
    });
    const s = res.status;
    // The API server lists the audiences it validated; one must be ours.
    if (!s?.authenticated || !s.user?.username || !(s.audiences ?? []).some((a) => audiences.includes(a))) {
      if (refused.size >= capacity) refused.delete(refused.keys().next().value as string);
      refused.set(key, now + Math.min(ttlMs, 5_000));
      return undefined;
    }
    const user: AuthenticatedUser = {
      username: s.user.username,
      ...(s.user.uid ? { uid: s.user.uid } : {}),
      groups: s.user.groups ?? [],
    };
    if (memo.size >= capacity) memo.delete(memo.keys().next().value as string);
    memo.set(key, { user, until: now + ttlMs });
    return user;
  };
}
