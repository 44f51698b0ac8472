/**
 * Task TTLs: a Go-style duration restricted to hours, minutes and seconds in
 * that order (`1h`, `90m`, `1h30m15s`), between 5 minutes and 24 hours.
 */
import { ValidationError } from "./errors.ts";

export const DEFAULT_TTL = "1h";
export const MIN_TTL_MS = 5 * 60_000;
export const MAX_TTL_MS = 24 * 3_600_000;

/**
 * `^(\d+h)?(\d+m)?(\d+s)?$` without the empty string, written without
 * lookahead so Go RE2 (Kubernetes CRD `pattern`) accepts it too.
 */
export const TTL_PATTERN = "^(?:[0-9]+h(?:[0-9]+m)?(?:[0-9]+s)?|[0-9]+m(?:[0-9]+s)?|[0-9]+s)$";

export type TtlRule = "type" | "format" | "min" | "max";

const TTL_REGEX = new RegExp(TTL_PATTERN);
// Longer inputs cannot be in range except with absurd leading zeros; refusing
// them bounds the work done on hostile input.
const MAX_TTL_TEXT_LENGTH = 64;

/** Parses a TTL into milliseconds. Throws a ValidationError naming `field` and the rule. */
export function parseTtl(s: unknown, field = "spec.ttl"): number {
  if (typeof s !== "string") {
    throw new ValidationError(field, "type", `${field}: ttl must be a string such as "1h" (rule type)`);
  }
  if (s.length > MAX_TTL_TEXT_LENGTH || !TTL_REGEX.test(s)) {
    throw new ValidationError(
      field,
      "format",
      `${field}: ttl ${JSON.stringify(s.slice(0, MAX_TTL_TEXT_LENGTH))} must be hours, minutes and seconds ` +
        `in that order, e.g. "1h", "90m", "1h30m" (rule format)`,
    );
  }
  let ms = 0;
  for (const [, digits, unit] of s.matchAll(/([0-9]+)([hms])/g)) {
    ms += Number(digits) * (unit === "h" ? 3_600_000 : unit === "m" ? 60_000 : 1000);
  }
  if (ms < MIN_TTL_MS) {
    throw new ValidationError(field, "min", `${field}: ttl ${s} is shorter than the minimum 5m (rule min)`);
  }
  if (ms > MAX_TTL_MS) {
    throw new ValidationError(field, "max", `${field}: ttl ${s} is longer than the maximum 24h (rule max)`);
  }
  return ms;
}

/**
 * Compact Go-style text for a duration: `1h30m`, `45s`, `0s`, `-2m`. Whole
 * seconds in the TTL range round-trip through parseTtl; a fractional second
 * is written as a decimal (`1.5s`) or in milliseconds below one second (`250ms`).
 */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) throw new RangeError(`formatDuration: ${ms} is not a finite number`);
  if (ms < 0) return `-${formatDuration(-ms)}`;
  if (ms === 0) return "0s";
  if (ms < 1000) return `${ms}ms`;
  const hours = Math.floor(ms / 3_600_000);
  const minutes = Math.floor((ms % 3_600_000) / 60_000);
  const seconds = (ms % 60_000) / 1000;
  return (
    (hours > 0 ? `${hours}h` : "") + (minutes > 0 ? `${minutes}m` : "") + (seconds > 0 ? `${seconds}s` : "")
  );
}
