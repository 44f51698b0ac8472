/**
 * RFC 8785 JSON Canonicalization Scheme (JCS).
 *
 * - Objects: members sorted by their names as arrays of UTF-16 code units
 *   (the default `Array.prototype.sort` comparison), recursively; arrays keep
 *   their order.
 * - Numbers: the ECMAScript Number-to-String algorithm, which is what
 *   `String(n)` is (so `-0` is written `0`); NaN and ±Infinity are refused.
 * - Strings: `"` and `\` escaped, U+0008/9/A/C/D as `\b \t \n \f \r`, the
 *   rest of U+0000..U+001F as lowercase `\u00hh`, everything else as is.
 *   Strings with lone surrogates are refused (RFC 8785 §3.2.2.2: they must
 *   make a compliant implementation fail).
 * - No whitespace. The caller encodes the result as UTF-8.
 *
 * Inputs are JavaScript values as `JSON.parse` produces them, plus one
 * convenience: object members whose value is `undefined` are left out (as
 * `JSON.stringify` does), so optional fields need no cleaning. Anything else
 * that is not JSON (bigint, functions, Dates, Maps, class instances,
 * `undefined` in an array) is refused rather than silently coerced, because a
 * silent coercion would sign something other than what the caller meant.
 */
import { ValidationError } from "../errors.ts";

export type JsonValue =
  | null
  | boolean
  | number
  | string
  | readonly JsonValue[]
  | { readonly [k: string]: JsonValue };

/** The canonical form of `value` (a string; UTF-8 encode it to hash or sign). */
export function canonicalize(value: unknown): string {
  return fastOrChecked(value, "$");
}

/** The canonical form of `value` as UTF-8 bytes. */
export function canonicalBytes(value: unknown): Uint8Array {
  return UTF8.encode(canonicalize(value));
}

/**
 * The members of a plain object, each serialized as `"name":value` in
 * canonical form, sorted canonically. Joining any subset with `,` inside
 * `{}` gives the canonical form of the object restricted to that subset, so
 * an event's hash input, signature input and record can share one pass.
 */
export function canonicalMembers(value: unknown, path = "$"): Array<readonly [name: string, member: string]> {
  if (!isPlainObject(value)) throw fail(path, "json-object", "must be a plain JSON object");
  const names = sortedNames(value);
  const out: Array<readonly [string, string]> = [];
  for (const name of names) {
    const v = value[name];
    if (v === undefined) continue;
    // The name first: an invalid name is reported before its value.
    const serializedName = serializeString(name, path);
    out.push([name, `${serializedName}:${fastOrChecked(v, path, name)}`]);
  }
  return out;
}

/** Joins members from {@link canonicalMembers} back into a canonical object. */
export function joinMembers(members: ReadonlyArray<readonly [string, string]>): string {
  let s = "{";
  for (let i = 0; i < members.length; i++) s += (i === 0 ? "" : ",") + members[i]![1];
  return s + "}";
}

const UTF8 = new TextEncoder();

/** Thrown by the fast pass for anything it does not write; the checked pass then says what and where. */
const NOT_CANONICAL = Symbol("not canonical");

/**
 * The fast pass's output; when it refuses, the checked pass's error, which
 * names the offending path (that of member `name` of `path`, when given:
 * built only then).
 */
function fastOrChecked(value: unknown, path: string, name?: string): string {
  try {
    return fast(value);
  } catch (err) {
    if (err !== NOT_CANONICAL) throw err;
    return serialize(value, name === undefined ? path : memberPath(path, name));
  }
}

// The fast pass: the same output as `serialize`, without building a path
// for every member (paths are only read in errors, and building them was
// most of what canonicalizing an event allocated).
function fast(value: unknown): string {
  switch (typeof value) {
    case "string":
      if (!value.isWellFormed()) throw NOT_CANONICAL;
      return NEEDS_ESCAPE.test(value) ? JSON.stringify(value) : `"${value}"`;
    case "number":
      if (!Number.isFinite(value)) throw NOT_CANONICAL;
      return String(value);
    case "boolean":
      return value ? "true" : "false";
    case "object": {
      if (value === null) return "null";
      if (Array.isArray(value)) {
        let s = "[";
        for (let i = 0; i < value.length; i++) {
          const item: unknown = value[i];
          if (item === undefined) throw NOT_CANONICAL;
          s += i === 0 ? fast(item) : `,${fast(item)}`;
        }
        return `${s}]`;
      }
      if (!isPlainObject(value)) throw NOT_CANONICAL;
      let s = "{";
      let first = true;
      for (const name of sortedNames(value)) {
        const v = value[name];
        if (v === undefined) continue;
        s += `${first ? "" : ","}${fast(name)}:${fast(v)}`;
        first = false;
      }
      return `${s}}`;
    }
    default:
      throw NOT_CANONICAL;
  }
}

/**
 * An object's member names in canonical order (UTF-16 code units, which is
 * how `<` compares strings). Objects here are small: an insertion sort in
 * place allocates nothing, where `Array.prototype.sort` copies.
 */
function sortedNames(value: object): string[] {
  const names = Object.keys(value);
  if (names.length > 32) return names.sort();
  for (let i = 1; i < names.length; i++) {
    const name = names[i]!;
    let j = i - 1;
    while (j >= 0 && names[j]! > name) {
      names[j + 1] = names[j]!;
      j--;
    }
    names[j + 1] = name;
  }
  return names;
}

// The hot path for nested objects: same output as joinMembers(canonicalMembers(...)), without the pairs.
function serializeObject(value: object, path: string): string {
  if (!isPlainObject(value)) throw fail(path, "json-object", "must be a plain JSON object");
  const names = sortedNames(value);
  let s = "{";
  let first = true;
  for (const name of names) {
    const v = value[name];
    if (v === undefined) continue;
    s += `${first ? "" : ","}${serializeString(name, path)}:${serialize(v, memberPath(path, name))}`;
    first = false;
  }
  return s + "}";
}

function serialize(value: unknown, path: string): string {
  switch (typeof value) {
    case "string":
      return serializeString(value, path);
    case "number":
      if (!Number.isFinite(value))
        throw fail(path, "finite-number", `must be a finite number (got ${value})`);
      return String(value);
    case "boolean":
      return value ? "true" : "false";
    case "object":
      if (value === null) return "null";
      if (Array.isArray(value)) {
        let s = "[";
        for (let i = 0; i < value.length; i++) {
          const item: unknown = value[i];
          if (item === undefined)
            throw fail(`${path}[${i}]`, "json-type", "must be a JSON value (got undefined)");
          s += (i === 0 ? "" : ",") + serialize(item, `${path}[${i}]`);
        }
        return s + "]";
      }
      return serializeObject(value, path);
    default:
      throw fail(path, "json-type", `must be a JSON value (got ${typeof value})`);
  }
}

// RFC 8785 §3.2.2.2 writes strings exactly as ECMAScript's JSON.stringify
// does for well-formed ones: `"` and `\` escaped, U+0008/9/A/C/D as short
// escapes, other controls as lowercase \u00hh, everything else as is. Most
// strings need no escape at all, and a regex test is the quickest way to see it.
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching U+0000..U+001F is the point (RFC 8785 §3.2.2.2).
const NEEDS_ESCAPE = /[\u0000-\u001f"\\]/;

function serializeString(s: string, path: string): string {
  if (!s.isWellFormed())
    throw fail(path, "well-formed-unicode", "must be well-formed Unicode (no lone surrogates)");
  return NEEDS_ESCAPE.test(s) ? JSON.stringify(s) : `"${s}"`;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

// Plain concatenation: paths are built for every member, and only read in errors.
function memberPath(path: string, name: string): string {
  return `${path}.${name}`;
}

function fail(path: string, rule: string, message: string): ValidationError {
  return new ValidationError(path, rule, `${path}: ${message} (rule ${rule})`);
}
