// A token bucket: `rate` tokens a second, at most `burst` held. The state is
// a plain object so that callers can keep many (one per agent) in a map.

export interface TokenBucket {
  tokens: number;
  /** When tokens were last counted (milliseconds). */
  at: number;
}

/** A full bucket at `now`. */
export function fullBucket(burst: number, now: number): TokenBucket {
  return { tokens: burst, at: now };
}

/** Refills the bucket up to `now`, then takes a token if there is one. */
export function takeToken(bucket: TokenBucket, rate: number, burst: number, now: number): boolean {
  bucket.tokens = Math.min(burst, bucket.tokens + ((now - bucket.at) / 1000) * rate);
  bucket.at = now;
  if (bucket.tokens < 1) return false;
  bucket.tokens -= 1;
  return true;
}
