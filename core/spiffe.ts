/**
 * SPIFFE IDs (https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md)
 * and the task ID layout `spiffe://<td>/ns/<namespace>/agent/<agent>/task/<task>`.
 *
 * The standard's rules, all enforced here: scheme exactly `spiffe://`; trust
 * domain non-empty, at most 255 bytes, only [a-z0-9._-] (so no uppercase, no
 * userinfo `@`, no port `:`); path segments non-empty, only [A-Za-z0-9._-],
 * not `.` or `..` (so no percent-encoding, query or fragment); no trailing
 * `/`; the whole ID at most 2048 bytes.
 */
import { ValidationError } from "./errors.ts";

export const SPIFFE_SCHEME_PREFIX = "spiffe://";
export const MAX_SPIFFE_ID_BYTES = 2048;
export const MAX_TRUST_DOMAIN_BYTES = 255;
export const MAX_DNS_LABEL_LENGTH = 63;
export const DEFAULT_TRUST_DOMAIN = "custody.local";

export interface SpiffeId {
  readonly trustDomain: string;
  /** `""` for a trust domain's own ID, else `/`-led, e.g. `/ns/a/agent/b/task/c`. */
  readonly path: string;
  readonly segments: readonly string[];
}

export interface TaskIdentity {
  readonly trustDomain: string;
  readonly namespace: string;
  readonly agent: string;
  readonly task: string;
}

export type SpiffeRule =
  | "type"
  | "max-length"
  | "scheme"
  | "trust-domain-empty"
  | "trust-domain-max-length"
  | "trust-domain-charset"
  | "userinfo"
  | "port"
  | "query"
  | "fragment"
  | "percent-encoding"
  | "empty-segment"
  | "dot-segment"
  | "trailing-slash"
  | "segment-charset"
  | "task-layout"
  | "dns-label"
  | "dns-label-max-length";

const TRUST_DOMAIN_CHAR = charTable("abcdefghijklmnopqrstuvwxyz0123456789._-");
const SEGMENT_CHAR = charTable("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-");
const DNS_LABEL = /^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?$/;

function charTable(chars: string): Uint8Array {
  const table = new Uint8Array(128);
  for (let i = 0; i < chars.length; i++) table[chars.charCodeAt(i)] = 1;
  return table;
}

function error(field: string, rule: SpiffeRule, detail: string): ValidationError {
  return new ValidationError(field, rule, `${field}: ${detail} (rule ${rule})`);
}

/** Names a character that is not allowed, with the URI part it would introduce. */
function badCharRule(char: string, fallback: SpiffeRule): SpiffeRule {
  switch (char) {
    case "@":
      return "userinfo";
    case ":":
      return "port";
    case "?":
      return "query";
    case "#":
      return "fragment";
    case "%":
      return "percent-encoding";
    default:
      return fallback;
  }
}

function firstBadChar(s: string, table: Uint8Array): number {
  for (let i = 0; i < s.length; i++) {
    const code = s.charCodeAt(i);
    if (code >= 128 || table[code] !== 1) return i;
  }
  return -1;
}

export function validateTrustDomain(td: unknown, field = "trustDomain"): string {
  if (typeof td !== "string") throw error(field, "type", "trust domain must be a string");
  if (td.length === 0) throw error(field, "trust-domain-empty", "trust domain is empty");
  // Every allowed character is one byte, so once the charset passes, length is bytes.
  const bad = firstBadChar(td, TRUST_DOMAIN_CHAR);
  if (bad >= 0) {
    const char = td[bad]!;
    throw error(
      field,
      badCharRule(char, "trust-domain-charset"),
      `trust domain ${JSON.stringify(td)} contains ${JSON.stringify(char)}; only [a-z0-9._-] is allowed`,
    );
  }
  if (td.length > MAX_TRUST_DOMAIN_BYTES) {
    throw error(
      field,
      "trust-domain-max-length",
      `trust domain is ${td.length} bytes, more than ${MAX_TRUST_DOMAIN_BYTES}`,
    );
  }
  return td;
}

/** Kubernetes-style DNS label: [a-z0-9]([-a-z0-9]*[a-z0-9])?, at most 63 characters. */
export function validateDnsLabel(name: unknown, field: string): string {
  if (typeof name !== "string") throw error(field, "type", "name must be a string");
  if (name.length > MAX_DNS_LABEL_LENGTH) {
    throw error(
      field,
      "dns-label-max-length",
      `name is ${name.length} characters, more than ${MAX_DNS_LABEL_LENGTH}`,
    );
  }
  if (!DNS_LABEL.test(name)) {
    throw error(
      field,
      "dns-label",
      `name ${JSON.stringify(name)} is not a DNS label: lowercase letters, digits and "-", ` +
        `starting and ending with a letter or digit`,
    );
  }
  return name;
}

function validateSegment(segment: string, field: string): void {
  if (segment.length === 0) throw error(field, "empty-segment", "path has an empty segment");
  if (segment === "." || segment === "..") {
    throw error(field, "dot-segment", `path has a ${JSON.stringify(segment)} segment`);
  }
  const bad = firstBadChar(segment, SEGMENT_CHAR);
  if (bad >= 0) {
    const char = segment[bad]!;
    throw error(
      field,
      badCharRule(char, "segment-charset"),
      `path segment ${JSON.stringify(segment)} contains ${JSON.stringify(char)}; only [A-Za-z0-9._-] is allowed`,
    );
  }
}

export function parseSpiffeId(uri: unknown, field = "spiffeId"): SpiffeId {
  if (typeof uri !== "string") throw error(field, "type", "SPIFFE ID must be a string");
  // UTF-16 length never exceeds UTF-8 byte length, so this bounds the work
  // before scanning; non-ASCII is then rejected by the charsets.
  if (uri.length > MAX_SPIFFE_ID_BYTES) {
    throw error(field, "max-length", `SPIFFE ID is longer than ${MAX_SPIFFE_ID_BYTES} bytes`);
  }
  if (!uri.startsWith(SPIFFE_SCHEME_PREFIX)) {
    throw error(field, "scheme", `SPIFFE ID must start with ${SPIFFE_SCHEME_PREFIX} (lowercase)`);
  }
  const rest = uri.slice(SPIFFE_SCHEME_PREFIX.length);
  const slash = rest.indexOf("/");
  const trustDomain = validateTrustDomain(slash < 0 ? rest : rest.slice(0, slash), field);
  if (slash < 0) return { trustDomain, path: "", segments: [] };

  const path = rest.slice(slash);
  if (path.endsWith("/")) throw error(field, "trailing-slash", "path must not end with /");
  const segments = path.slice(1).split("/");
  for (const segment of segments) validateSegment(segment, field);
  return { trustDomain, path, segments };
}

/**
 * Builds a task's SPIFFE ID. The result is at most
 * 9 + 255 + 4 + 63 + 7 + 63 + 6 + 63 = 460 bytes, well under the 2048 limit.
 */
export function buildTaskSpiffeId(id: TaskIdentity): string {
  validateTrustDomain(id.trustDomain, "trustDomain");
  validateDnsLabel(id.namespace, "namespace");
  validateDnsLabel(id.agent, "agent");
  validateDnsLabel(id.task, "task");
  return `${SPIFFE_SCHEME_PREFIX}${id.trustDomain}/ns/${id.namespace}/agent/${id.agent}/task/${id.task}`;
}

/** Parses a SPIFFE ID that must follow the task layout with DNS-label names. */
export function parseTaskSpiffeId(uri: unknown, field = "spiffeId"): TaskIdentity {
  const { trustDomain, segments } = parseSpiffeId(uri, field);
  const [ns, namespace, agentKey, agent, taskKey, task] = segments;
  if (
    segments.length !== 6 ||
    ns !== "ns" ||
    agentKey !== "agent" ||
    taskKey !== "task" ||
    namespace === undefined ||
    agent === undefined ||
    task === undefined
  ) {
    throw error(field, "task-layout", "SPIFFE ID path must be /ns/<namespace>/agent/<agent>/task/<task>");
  }
  validateDnsLabel(namespace, `${field} namespace`);
  validateDnsLabel(agent, `${field} agent`);
  validateDnsLabel(task, `${field} task`);
  return { trustDomain, namespace, agent, task };
}
