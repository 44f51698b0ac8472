/**
 * Scope grants: `<verb>:<resource>`, the subset relation between scopes, and
 * whether a scope allows a concrete action. The grammar and the reasoning
 * behind the subset relation are in docs/scope-grammar.md.
 */
import { ValidationError } from "./errors.ts";

export const MAX_GRANT_LENGTH = 256;
export const MAX_SCOPE_GRANTS = 64;
export const MAX_VERB_LENGTH = 32;

/** The `*` verb or resource: any verb / any path. */
export const WILDCARD = "*";

// A segment is [A-Za-z0-9._~-]+ except "." and "..". Without lookahead (RE2
// has none) that is: three or more dots, or any run containing a non-dot
// character, written as "dots, then the first non-dot, then anything". Each
// string has exactly one way to match, so backtracking stays linear per segment.
const SEGMENT = String.raw`(?:\.{3,}|\.*[A-Za-z0-9_~-][A-Za-z0-9._~-]*)`;
const VERB = String.raw`(?:\*|[a-z][a-z0-9-]{0,31})`;
const RESOURCE = String.raw`(?:\*|${SEGMENT}(?:/${SEGMENT})*(?:/\*)?)`;

/**
 * The grant grammar as an anchored regex source that is valid both as
 * ECMA-262 and as Go RE2 (which the Kubernetes apiserver uses for CRD
 * `pattern`): no lookaround, no backreferences. It does not bound the length;
 * pair it with `maxLength: MAX_GRANT_LENGTH` in a schema.
 */
export const GRANT_PATTERN = `^${VERB}:${RESOURCE}$`;

export type Resource =
  | { readonly kind: "any" }
  | { readonly kind: "exact"; readonly segments: readonly string[] }
  /** Any path strictly below `segments` (one or more further segments). */
  | { readonly kind: "prefix"; readonly segments: readonly string[] };

export interface Grant {
  /** A concrete verb, or `*` for any verb. */
  readonly verb: string;
  readonly resource: Resource;
}

/** A concrete request to check against a scope: no wildcards. */
export interface Action {
  readonly verb: string;
  /** `/`-separated segments, e.g. `repos/acme/api`. */
  readonly path: string;
}

export type SubsetResult =
  | { readonly ok: true }
  /** `grant` is the first child grant (at `index`) that no parent grant covers. */
  | { readonly ok: false; readonly index: number; readonly grant: Grant };

export type GrantRule =
  | "type"
  | "empty"
  | "max-length"
  | "missing-colon"
  | "verb"
  | "resource-empty"
  | "empty-segment"
  | "dot-segment"
  | "wildcard-position"
  | "segment-charset";

export type ScopeRule = GrantRule | "not-a-list" | "min-grants" | "max-grants" | "duplicate";

// Lookup tables instead of regexes keep the parser a single linear pass.
const SEGMENT_CHAR = charTable("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-");
const VERB_FIRST = charTable("abcdefghijklmnopqrstuvwxyz");
const VERB_REST = charTable("abcdefghijklmnopqrstuvwxyz0123456789-");

function charTable(chars: string): Uint8Array {
  const table = new Uint8Array(128);
  for (let i = 0; i < chars.length; i++) table[chars.charCodeAt(i)] = 1;
  return table;
}

function inTable(table: Uint8Array, code: number): boolean {
  return code < 128 && table[code] === 1;
}

function fail(field: string, rule: GrantRule, grant: string, detail: string): never {
  throw new ValidationError(field, rule, `${field}: grant ${JSON.stringify(grant)} ${detail} (rule ${rule})`);
}

export function isValidVerb(verb: string): boolean {
  if (verb.length === 0 || verb.length > MAX_VERB_LENGTH) return false;
  if (!inTable(VERB_FIRST, verb.charCodeAt(0))) return false;
  for (let i = 1; i < verb.length; i++) if (!inTable(VERB_REST, verb.charCodeAt(i))) return false;
  return true;
}

/**
 * Parses the `/`-separated segments of `path` (no wildcards). Returns the
 * offending rule instead of throwing so that both grants and actions can use it.
 */
function parseSegments(path: string): { segments: string[] } | { rule: GrantRule; detail: string } {
  const segments: string[] = [];
  let start = 0;
  for (let i = 0; i <= path.length; i++) {
    const code = i < path.length ? path.charCodeAt(i) : 47; // end acts as a "/"
    if (code === 47) {
      const segment = path.slice(start, i);
      if (segment.length === 0) return { rule: "empty-segment", detail: "has an empty path segment" };
      if (segment === "." || segment === "..") {
        return { rule: "dot-segment", detail: `has a "${segment}" path segment` };
      }
      segments.push(segment);
      start = i + 1;
    } else if (!inTable(SEGMENT_CHAR, code)) {
      if (code === 42) {
        return {
          rule: "wildcard-position",
          detail: "has a * that is not the whole resource or the whole last segment",
        };
      }
      return {
        rule: "segment-charset",
        detail: `has ${JSON.stringify(path[i])} in a path segment; segments allow only [A-Za-z0-9._~-]`,
      };
    }
  }
  return { segments };
}

/** Parses one grant. Throws a ValidationError naming `field` and the broken rule. */
export function parseGrant(s: unknown, field = "grant"): Grant {
  if (typeof s !== "string") {
    throw new ValidationError(field, "type", `${field}: a grant must be a string (rule type)`);
  }
  if (s.length === 0) fail(field, "empty", s, "is empty");
  if (s.length > MAX_GRANT_LENGTH) {
    throw new ValidationError(
      field,
      "max-length",
      `${field}: grant is ${s.length} characters, more than ${MAX_GRANT_LENGTH} (rule max-length)`,
    );
  }
  const colon = s.indexOf(":");
  if (colon < 0) fail(field, "missing-colon", s, "is not of the form <verb>:<resource>");
  const verb = s.slice(0, colon);
  if (verb !== WILDCARD && !isValidVerb(verb)) {
    fail(field, "verb", s, "has a verb that is neither * nor [a-z][a-z0-9-]{0,31}");
  }
  const resource = s.slice(colon + 1);
  if (resource.length === 0) fail(field, "resource-empty", s, "has an empty resource");
  if (resource === WILDCARD) return { verb, resource: { kind: "any" } };

  const isPrefix = resource.endsWith("/*");
  const parsed = parseSegments(isPrefix ? resource.slice(0, -2) : resource);
  if ("rule" in parsed) fail(field, parsed.rule, s, parsed.detail);
  return { verb, resource: { kind: isPrefix ? "prefix" : "exact", segments: parsed.segments } };
}

/** The canonical text of a grant; `formatGrant(parseGrant(s)) === s` for every valid `s`. */
export function formatGrant(grant: Grant): string {
  const r = grant.resource;
  const resource = r.kind === "any" ? WILDCARD : r.segments.join("/") + (r.kind === "prefix" ? "/*" : "");
  return `${grant.verb}:${resource}`;
}

/**
 * Validates a scope (1..64 distinct valid grants) and returns the parsed
 * grants in order. Errors name the element, e.g. `spec.scope[3]`.
 */
export function validateScope(list: unknown, field = "spec.scope"): Grant[] {
  if (!Array.isArray(list)) {
    throw new ValidationError(
      field,
      "not-a-list",
      `${field}: scope must be a list of grants (rule not-a-list)`,
    );
  }
  if (list.length === 0) {
    throw new ValidationError(
      field,
      "min-grants",
      `${field}: scope must have at least one grant (rule min-grants)`,
    );
  }
  if (list.length > MAX_SCOPE_GRANTS) {
    throw new ValidationError(
      field,
      "max-grants",
      `${field}: scope has ${list.length} grants, more than ${MAX_SCOPE_GRANTS} (rule max-grants)`,
    );
  }
  const seen = new Map<string, number>();
  const grants: Grant[] = [];
  for (let i = 0; i < list.length; i++) {
    const element: unknown = list[i];
    const elementField = `${field}[${i}]`;
    grants.push(parseGrant(element, elementField));
    // The grammar is canonical (one spelling per grant), so textual equality is grant equality.
    const text = element as string;
    const first = seen.get(text);
    if (first !== undefined) {
      throw new ValidationError(
        elementField,
        "duplicate",
        `${elementField}: grant ${JSON.stringify(text)} duplicates ${field}[${first}] (rule duplicate)`,
      );
    }
    seen.set(text, i);
  }
  return grants;
}

function segmentsStartWith(segments: readonly string[], prefix: readonly string[]): boolean {
  if (segments.length < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (segments[i] !== prefix[i]) return false;
  return true;
}

function segmentsEqual(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && segmentsStartWith(a, b);
}

function resourceCovers(parent: Resource, child: Resource): boolean {
  switch (parent.kind) {
    case "any":
      return true;
    case "exact":
      return child.kind === "exact" && segmentsEqual(child.segments, parent.segments);
    case "prefix":
      // `X/*` covers exactly the resources whose text starts with `X/`: exact
      // paths strictly below X, and prefixes at or below X.
      if (child.kind === "any") return false;
      if (child.kind === "exact" && child.segments.length === parent.segments.length) return false;
      return segmentsStartWith(child.segments, parent.segments);
  }
}

/** Whether every action `child` allows is allowed by `parent`. */
export function grantCovers(parent: Grant, child: Grant): boolean {
  return (
    (parent.verb === WILDCARD || parent.verb === child.verb) &&
    resourceCovers(parent.resource, child.resource)
  );
}

/**
 * Whether `child` allows nothing that `parent` does not. Checking each child
 * grant against single parent grants is exact for this grammar; see
 * docs/scope-grammar.md.
 */
export function scopeIsSubset(child: readonly Grant[], parent: readonly Grant[]): SubsetResult {
  for (let index = 0; index < child.length; index++) {
    const grant = child[index]!;
    if (!parent.some((p) => grantCovers(p, grant))) return { ok: false, index, grant };
  }
  return { ok: true };
}

function grantMatches(grant: Grant, verb: string, segments: readonly string[]): boolean {
  if (grant.verb !== WILDCARD && grant.verb !== verb) return false;
  const r = grant.resource;
  switch (r.kind) {
    case "any":
      return true;
    case "exact":
      return segmentsEqual(segments, r.segments);
    case "prefix":
      return segments.length > r.segments.length && segmentsStartWith(segments, r.segments);
  }
}

/**
 * Whether some grant of `scope` allows the concrete `action`. A malformed
 * action (wildcard, `*` verb, empty or dot segment, other characters) is never
 * allowed: `read:a/*` must not let `a/../b` through to whatever resolves it.
 */
export function scopeAllows(scope: readonly Grant[], action: Action): boolean {
  if (!isValidVerb(action.verb)) return false;
  const parsed = parseSegments(action.path);
  if ("rule" in parsed) return false;
  return scope.some((g) => grantMatches(g, action.verb, parsed.segments));
}

/**
 * The grant allowing exactly the actions both `a` and `b` allow, or undefined
 * if there are none. Grants are "cones" (a verb set times a path set closed
 * under extension), so two of them intersect in one grant or nothing.
 */
export function intersectGrants(a: Grant, b: Grant): Grant | undefined {
  let verb: string;
  if (a.verb === WILDCARD) verb = b.verb;
  else if (b.verb === WILDCARD || b.verb === a.verb) verb = a.verb;
  else return undefined;
  let resource: Resource;
  if (resourceCovers(a.resource, b.resource)) resource = b.resource;
  else if (resourceCovers(b.resource, a.resource)) resource = a.resource;
  else return undefined;
  return { verb, resource };
}

/**
 * The scope allowing exactly the actions both scopes allow, without redundant
 * grants (none covered by another), in first-seen order. May be empty, and
 * may hold more than MAX_SCOPE_GRANTS grants; callers decide what to do then.
 */
export function intersectScopes(a: readonly Grant[], b: readonly Grant[]): Grant[] {
  const candidates: Grant[] = [];
  for (const ga of a) {
    for (const gb of b) {
      const g = intersectGrants(ga, gb);
      if (g !== undefined) candidates.push(g);
    }
  }
  // Drop a candidate if another covers it; among equal candidates keep the first.
  return candidates.filter(
    (g, i) =>
      !candidates.some((other, j) => j !== i && grantCovers(other, g) && (!grantCovers(g, other) || j < i)),
  );
}
