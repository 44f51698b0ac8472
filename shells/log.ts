// Structured JSON-lines logger. One record = one line = one write, so lines
// from concurrent writers never interleave mid-record in the pod log.
//
// Redaction is a guard, not a feature to rely on: callers must not pass
// secrets at all, but if a field is named like one (key, token, secret,
// password, privateKey, tls.key, assertion, ...) or a string value looks like
// PEM private key material, its value is replaced by "[redacted]".

export type LogLevel = "debug" | "info" | "warn" | "error";
export type LogFields = Readonly<Record<string, unknown>>;

export interface Logger {
  readonly name: string;
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  /** A logger named `<this name>.<suffix>` sharing level and sink. */
  child(suffix: string): Logger;
  isEnabled(level: LogLevel): boolean;
}

export interface LoggerOptions {
  name: string;
  level?: LogLevel;
  /** Receives each complete line (with trailing newline). Default: process.stdout.write. */
  write?: (line: string) => void;
  /** Default: () => new Date(). */
  now?: () => Date;
}

const LEVEL_RANK: Readonly<Record<LogLevel, number>> = { debug: 10, info: 20, warn: 30, error: 40 };

export const REDACTED = "[redacted]";

/** Parses a level name (e.g. from an env var); throws naming the accepted values. */
export function parseLogLevel(value: string, field = "log level"): LogLevel {
  const v = value.trim().toLowerCase();
  if (v === "debug" || v === "info" || v === "warn" || v === "error") return v;
  throw new Error(`${field}: "${value}" is not one of debug, info, warn, error`);
}

// Field names are compared after lower-casing and removing separators, so
// "tls.key", "private_key", "privateKey" and "apiKey" all end in "key".
// Matching on the suffix keeps harmless names like "keyId", "secretName" or
// "tokenTtl" loggable. Note: a work-queue key therefore must be logged under a
// name such as "object", not "key".
const SENSITIVE_SUFFIXES = [
  "key",
  "token",
  "secret",
  "password",
  "passwd",
  "passphrase",
  "assertion",
  "credential",
  "credentials",
  "authorization",
  "cookie",
];

export function isSensitiveFieldName(name: string): boolean {
  const normalized = name.toLowerCase().replace(/[^a-z0-9]/g, "");
  return SENSITIVE_SUFFIXES.some((s) => normalized.endsWith(s));
}

const PEM_PRIVATE_KEY = /-----BEGIN [A-Z ]*PRIVATE KEY-----/;

const MAX_DEPTH = 8;

/** Returns a JSON-safe copy of `value` with sensitive fields redacted. */
export function sanitize(value: unknown, depth = 0, seen: WeakSet<object> = new WeakSet()): unknown {
  if (value === null || value === undefined) return value;
  switch (typeof value) {
    case "string":
      return PEM_PRIVATE_KEY.test(value) ? REDACTED : value;
    case "number":
    case "boolean":
      return value;
    case "bigint":
      return value.toString();
    case "function":
    case "symbol":
      return String(value);
  }
  if (value instanceof Error) {
    const out: Record<string, unknown> = { name: value.name, message: sanitize(value.message) };
    const code = (value as { code?: unknown }).code;
    if (code !== undefined) out.code = sanitize(code, depth + 1, seen);
    if (value.stack !== undefined) out.stack = sanitize(value.stack);
    if (value.cause !== undefined && depth < MAX_DEPTH) out.cause = sanitize(value.cause, depth + 1, seen);
    return out;
  }
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? "Invalid Date" : value.toISOString();
  if (value instanceof Uint8Array) return `<${value.byteLength} bytes>`;
  const obj = value as object;
  if (seen.has(obj)) return "[circular]";
  if (depth >= MAX_DEPTH) return "[truncated]";
  seen.add(obj);
  try {
    if (Array.isArray(obj)) return obj.map((v) => sanitize(v, depth + 1, seen));
    if (obj instanceof Map) return sanitizeRecord(Object.fromEntries(obj), depth, seen);
    if (obj instanceof Set) return [...obj].map((v) => sanitize(v, depth + 1, seen));
    return sanitizeRecord(obj as Record<string, unknown>, depth, seen);
  } finally {
    seen.delete(obj);
  }
}

function sanitizeRecord(rec: Record<string, unknown>, depth: number, seen: WeakSet<object>): unknown {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(rec)) {
    if (v === undefined) continue;
    out[k] = isSensitiveFieldName(k) ? REDACTED : sanitize(v, depth + 1, seen);
  }
  return out;
}

export function createLogger(options: LoggerOptions): Logger {
  const level = options.level ?? "info";
  if (!(level in LEVEL_RANK)) throw new Error(`createLogger: level "${level}" is not debug|info|warn|error`);
  const write = options.write ?? ((line: string) => void process.stdout.write(line));
  const now = options.now ?? (() => new Date());
  return makeLogger(options.name, LEVEL_RANK[level], write, now);
}

function makeLogger(name: string, minRank: number, write: (line: string) => void, now: () => Date): Logger {
  const emit = (level: LogLevel, msg: string, fields: LogFields | undefined): void => {
    if (LEVEL_RANK[level] < minRank) return;
    const record: Record<string, unknown> = {
      time: now().toISOString(),
      level,
      logger: name,
      msg: sanitize(msg),
    };
    if (fields !== undefined) {
      const clean = sanitizeRecord(fields as Record<string, unknown>, 0, new WeakSet());
      if (Object.keys(clean as object).length > 0) record.fields = clean;
    }
    let line: string;
    try {
      line = JSON.stringify(record);
    } catch (err) {
      // Only reachable through exotic toJSON implementations; never lose the message.
      line = JSON.stringify({ ...record, fields: { unserializable: String(err) } });
    }
    write(line + "\n");
  };
  return {
    name,
    debug: (msg, fields) => emit("debug", msg, fields),
    info: (msg, fields) => emit("info", msg, fields),
    warn: (msg, fields) => emit("warn", msg, fields),
    error: (msg, fields) => emit("error", msg, fields),
    child: (suffix) => makeLogger(`${name}.${suffix}`, minRank, write, now),
    isEnabled: (level) => LEVEL_RANK[level] >= minRank,
  };
}

/** A logger that drops everything; the default for library code in tests. */
export const silentLogger: Logger = createLogger({ name: "silent", level: "error", write: () => {} });
