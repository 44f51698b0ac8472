import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ValidationError } from "../../core/errors.ts";
import {
  type Action,
  formatGrant,
  GRANT_PATTERN,
  type Grant,
  grantCovers,
  intersectGrants,
  intersectScopes,
  MAX_GRANT_LENGTH,
  MAX_SCOPE_GRANTS,
  parseGrant,
  type Resource,
  scopeAllows,
  scopeIsSubset,
  validateScope,
} from "../../core/scope.ts";

function errorOf(fn: () => unknown): ValidationError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ValidationError) return e;
    throw e;
  }
  throw new Error("expected a ValidationError");
}

const g = (s: string): Grant => parseGrant(s);
const scope = (...grants: string[]): Grant[] => grants.map(g);

describe("parseGrant", () => {
  it.each([
    ["read:*", { verb: "read", resource: { kind: "any" } }],
    ["*:*", { verb: "*", resource: { kind: "any" } }],
    ["read:repos", { verb: "read", resource: { kind: "exact", segments: ["repos"] } }],
    [
      "read:repos/acme/api",
      { verb: "read", resource: { kind: "exact", segments: ["repos", "acme", "api"] } },
    ],
    ["write:repos/acme/*", { verb: "write", resource: { kind: "prefix", segments: ["repos", "acme"] } }],
    ["*:a/*", { verb: "*", resource: { kind: "prefix", segments: ["a"] } }],
    ["x0-:a", { verb: "x0-", resource: { kind: "exact", segments: ["a"] } }],
    ["read:...", { verb: "read", resource: { kind: "exact", segments: ["..."] } }],
    ["read:.a/a./a..b", { verb: "read", resource: { kind: "exact", segments: [".a", "a.", "a..b"] } }],
    ["read:~user/A-Z_0.9~", { verb: "read", resource: { kind: "exact", segments: ["~user", "A-Z_0.9~"] } }],
  ] as const)("accepts %s", (text, expected) => {
    expect(parseGrant(text)).toEqual(expected);
    expect(formatGrant(parseGrant(text))).toBe(text);
  });

  it("accepts a 32-character verb and a grant of exactly 256 characters", () => {
    const verb = `a${"b".repeat(31)}`;
    const text = `${verb}:${"r".repeat(MAX_GRANT_LENGTH - verb.length - 1)}`;
    expect(text).toHaveLength(256);
    expect(parseGrant(text).verb).toBe(verb);
  });

  it.each([
    ["", "empty"],
    ["read", "missing-colon"],
    ["read/a", "missing-colon"],
    [":a", "verb"],
    ["Read:a", "verb"],
    ["0read:a", "verb"],
    ["-r:a", "verb"],
    ["re ad:a", "verb"],
    ["**:a", "verb"],
    ["rëad:a", "verb"],
    [`a${"b".repeat(32)}:x`, "verb"],
    ["read:", "resource-empty"],
    ["*:", "resource-empty"],
    ["read:/a", "empty-segment"],
    ["read:a/", "empty-segment"],
    ["read:a//b", "empty-segment"],
    ["read:/*", "empty-segment"],
    ["read:.", "dot-segment"],
    ["read:./a", "dot-segment"],
    ["read:a/..", "dot-segment"],
    ["read:../*", "dot-segment"],
    ["read:a*", "wildcard-position"],
    ["read:*a", "wildcard-position"],
    ["read:**", "wildcard-position"],
    ["read:*/a", "wildcard-position"],
    ["read:*/*", "wildcard-position"],
    ["read:a/*/b", "wildcard-position"],
    ["read:a/*/*", "wildcard-position"],
    ["read:a/b*", "wildcard-position"],
    ["read:a:b", "segment-charset"],
    ["read::", "segment-charset"],
    ["read:a b", "segment-charset"],
    ["read:a%2Fb", "segment-charset"],
    ["read:a?x", "segment-charset"],
    ["read:a\\b", "segment-charset"],
    ["read:ünï", "segment-charset"],
    ["read:😀", "segment-charset"],
    [`read:${"r".repeat(MAX_GRANT_LENGTH - 4)}`, "max-length"],
  ])("rejects %j with rule %s", (text, rule) => {
    const e = errorOf(() => parseGrant(text, "spec.scope[0]"));
    expect(e.rule).toBe(rule);
    expect(e.field).toBe("spec.scope[0]");
    expect(e.message).toMatch(new RegExp(`^spec\\.scope\\[0\\]: .*\\(rule ${rule}\\)$`));
  });

  it("rejects non-strings", () => {
    expect(errorOf(() => parseGrant(7)).rule).toBe("type");
  });
});

describe("validateScope", () => {
  it("returns the parsed grants in order", () => {
    expect(validateScope(["read:a/*", "*:b"]).map(formatGrant)).toEqual(["read:a/*", "*:b"]);
  });

  it("accepts 64 grants and rejects 65", () => {
    const grants = Array.from({ length: MAX_SCOPE_GRANTS + 1 }, (_, i) => `read:r${i}`);
    expect(validateScope(grants.slice(0, MAX_SCOPE_GRANTS))).toHaveLength(64);
    const e = errorOf(() => validateScope(grants));
    expect([e.field, e.rule]).toEqual(["spec.scope", "max-grants"]);
  });

  it.each([
    ["read:*", "spec.scope", "not-a-list"],
    [[], "spec.scope", "min-grants"],
    [["read:a", "read:b", "read:a"], "spec.scope[2]", "duplicate"],
    [["read:a", "read:a/"], "spec.scope[1]", "empty-segment"],
    [["read:a", 5], "spec.scope[1]", "type"],
  ])("rejects %j at %s with rule %s", (list, field, rule) => {
    const e = errorOf(() => validateScope(list));
    expect([e.field, e.rule]).toEqual([field, rule]);
  });

  it("names a custom field", () => {
    const e = errorOf(() => validateScope(["x"], "spec.delegation.scope"));
    expect(e.field).toBe("spec.delegation.scope[0]");
  });

  it("does not treat grants that merely overlap as duplicates", () => {
    expect(validateScope(["read:a/*", "read:a/b", "*:a/b"])).toHaveLength(3);
  });
});

describe("grantCovers", () => {
  it.each([
    ["read:*", "read:a", true],
    ["read:*", "read:a/*", true],
    ["read:*", "read:*", true],
    ["*:*", "*:*", true],
    ["*:a", "read:a", true],
    ["read:a", "*:a", false],
    ["read:*", "*:*", false],
    ["read:a", "write:a", false],
    ["read:a", "read:a", true],
    ["read:a", "read:a/b", false],
    ["read:a", "read:a/*", false],
    ["read:a/*", "read:a", false],
    ["read:a/*", "read:a/b", true],
    ["read:a/*", "read:a/b/c", true],
    ["read:a/*", "read:a/*", true],
    ["read:a/*", "read:a/b/*", true],
    ["read:a/b/*", "read:a/*", false],
    ["read:a/*", "read:ab", false],
    ["read:a/*", "read:ab/*", false],
    ["read:a/*", "read:*", false],
    ["read:a/b", "read:a/c", false],
  ])("%s covers %s: %s", (parent, child, expected) => {
    expect(grantCovers(g(parent), g(child))).toBe(expected);
  });
});

describe("scopeIsSubset", () => {
  it("reports the first child grant that no single parent grant covers", () => {
    const result = scopeIsSubset(scope("read:a/b", "write:x", "read:a", "read:z"), scope("read:a/*", "*:x"));
    expect(result).toEqual({ ok: false, index: 2, grant: g("read:a") });
  });

  it("accepts when each child grant has a covering parent grant", () => {
    expect(scopeIsSubset(scope("read:a/b", "write:x", "read:a"), scope("read:a/*", "*:x", "read:a"))).toEqual(
      {
        ok: true,
      },
    );
  });

  it("treats the empty child as a subset of anything", () => {
    expect(scopeIsSubset([], scope("read:a")).ok).toBe(true);
  });
});

describe("scopeAllows", () => {
  const s = scope("read:repos/*", "write:repos/acme/api", "*:public/*", "admin:*");
  it.each([
    [{ verb: "read", path: "repos/acme" }, true],
    [{ verb: "read", path: "repos/acme/api/issues" }, true],
    [{ verb: "read", path: "repos" }, false],
    [{ verb: "write", path: "repos/acme/api" }, true],
    [{ verb: "write", path: "repos/acme/api/x" }, false],
    [{ verb: "delete", path: "public/x" }, true],
    [{ verb: "delete", path: "public" }, false],
    [{ verb: "admin", path: "anything/at/all" }, true],
    [{ verb: "read", path: "reposx/a" }, false],
    // Malformed actions are never allowed, even where a naive prefix match would.
    [{ verb: "read", path: "repos/../secrets" }, false],
    [{ verb: "read", path: "repos/./a" }, false],
    [{ verb: "read", path: "repos//a" }, false],
    [{ verb: "read", path: "repos/a/" }, false],
    [{ verb: "read", path: "repos/*" }, false],
    [{ verb: "read", path: "repos/a%2F..%2Fb" }, false],
    [{ verb: "admin", path: "" }, false],
    [{ verb: "*", path: "public/x" }, false],
    [{ verb: "Admin", path: "x" }, false],
  ])("%j -> %s", (action, expected) => {
    expect(scopeAllows(s, action)).toBe(expected);
  });
});

describe("intersectGrants / intersectScopes", () => {
  it.each([
    ["*:a/*", "read:*", "read:a/*"],
    ["read:a/*", "read:a/b/*", "read:a/b/*"],
    ["read:a/*", "*:a/b", "read:a/b"],
    ["read:a/*", "read:a", undefined],
    ["read:a", "write:a", undefined],
    ["read:a/*", "read:b/*", undefined],
  ])("%s ∩ %s = %s", (a, b, expected) => {
    const result = intersectGrants(g(a), g(b));
    expect(result === undefined ? undefined : formatGrant(result)).toBe(expected);
  });

  it("drops redundant grants", () => {
    const result = intersectScopes(scope("read:*", "*:a/*"), scope("read:a/b", "read:a/*"));
    expect(result.map(formatGrant)).toEqual(["read:a/*"]);
  });
});

// ---------------------------------------------------------------------------
// Properties. Small alphabets make overlaps (and thus interesting subset
// relations) likely; the occasional odd-but-valid segment keeps the grammar's
// corners in play.

const VERBS = ["read", "write", "x-1"];
const verbArb = fc.oneof(
  { weight: 1, arbitrary: fc.constant("*") },
  { weight: 3, arbitrary: fc.constantFrom(...VERBS) },
);
const segmentArb = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom("a", "b", "c") },
  { weight: 1, arbitrary: fc.constantFrom("...", ".a", "a..", "~", "A_-9") },
);
const segmentsArb = (min: number) => fc.array(segmentArb, { minLength: min, maxLength: 3 });
const resourceArb: fc.Arbitrary<Resource> = fc.oneof(
  fc.constant({ kind: "any" } as const),
  segmentsArb(1).map((segments) => ({ kind: "exact", segments }) as const),
  segmentsArb(1).map((segments) => ({ kind: "prefix", segments }) as const),
);
const grantArb: fc.Arbitrary<Grant> = fc.record({ verb: verbArb, resource: resourceArb });
const scopeArb = fc.uniqueArray(grantArb, { minLength: 1, maxLength: 5, selector: formatGrant });

/** A grant that `parent` covers, by construction. */
function narrowedArb(parent: Grant): fc.Arbitrary<Grant> {
  const verb = parent.verb === "*" ? verbArb : fc.constant(parent.verb);
  const r = parent.resource;
  let resource: fc.Arbitrary<Resource>;
  if (r.kind === "any") resource = resourceArb;
  else if (r.kind === "exact") resource = fc.constant(r);
  else {
    resource = fc.oneof(
      segmentsArb(1).map((ext) => ({ kind: "exact", segments: [...r.segments, ...ext] }) as const),
      segmentsArb(0).map((ext) => ({ kind: "prefix", segments: [...r.segments, ...ext] }) as const),
    );
  }
  return fc.record({ verb, resource });
}

/** A sub-scope of `parent`: narrowings of its grants, plus sometimes an unrelated grant. */
function subScopeArb(parent: readonly Grant[]): fc.Arbitrary<Grant[]> {
  return fc.array(
    fc.constantFrom(...parent).chain((p) => narrowedArb(p)),
    { minLength: 1, maxLength: 4 },
  );
}

/** A concrete action that `grant` allows. */
function instanceArb(grant: Grant): fc.Arbitrary<Action> {
  const verb = grant.verb === "*" ? fc.constantFrom(...VERBS, "fresh") : fc.constant(grant.verb);
  const r = grant.resource;
  const segments =
    r.kind === "any"
      ? segmentsArb(1)
      : r.kind === "exact"
        ? fc.constant([...r.segments])
        : segmentsArb(1).map((ext) => [...r.segments, ...ext]);
  return fc.record({ verb, path: segments.map((s) => s.join("/")) });
}

const actionArb: fc.Arbitrary<Action> = fc.record({
  verb: fc.constantFrom(...VERBS, "fresh"),
  path: fc.array(segmentArb, { minLength: 1, maxLength: 4 }).map((s) => s.join("/")),
});

describe("scope properties", () => {
  it("parse and format are inverse on generated grants", () => {
    fc.assert(
      fc.property(grantArb, (grant) => {
        expect(parseGrant(formatGrant(grant))).toEqual(grant);
      }),
    );
  });

  it("subset is reflexive", () => {
    fc.assert(
      fc.property(scopeArb, (s) => {
        expect(scopeIsSubset(s, s)).toEqual({ ok: true });
      }),
    );
  });

  it("narrowed grants are covered (the generator and grantCovers agree)", () => {
    fc.assert(
      fc.property(
        grantArb.chain((p) => fc.tuple(fc.constant(p), narrowedArb(p))),
        ([p, c]) => {
          expect(grantCovers(p, c)).toBe(true);
        },
      ),
    );
  });

  it("subset is transitive", () => {
    const chain = scopeArb.chain((a) =>
      subScopeArb(a).chain((b) =>
        fc.tuple(fc.constant(a), fc.constant(b), fc.oneof(subScopeArb(b), scopeArb)),
      ),
    );
    fc.assert(
      fc.property(chain, ([a, b, c]) => {
        if (scopeIsSubset(c, b).ok && scopeIsSubset(b, a).ok) expect(scopeIsSubset(c, a).ok).toBe(true);
      }),
      { numRuns: 500 },
    );
  });

  it("is sound: an action a sub-scope allows, the parent allows", () => {
    const cases = scopeArb.chain((parent) =>
      fc
        .oneof(subScopeArb(parent), scopeArb)
        .chain((child) =>
          fc.tuple(
            fc.constant(parent),
            fc.constant(child),
            fc.oneof(fc.constantFrom(...child).chain(instanceArb), actionArb),
          ),
        ),
    );
    let checked = 0;
    fc.assert(
      fc.property(cases, ([parent, child, action]) => {
        if (!scopeIsSubset(child, parent).ok || !scopeAllows(child, action)) return;
        checked++;
        expect(scopeAllows(parent, action)).toBe(true);
      }),
      { numRuns: 1000 },
    );
    expect(checked).toBeGreaterThan(300);
  });

  it("a grant allows every instance of itself", () => {
    fc.assert(
      fc.property(
        grantArb.chain((grant) => fc.tuple(fc.constant(grant), instanceArb(grant))),
        ([grant, action]) => {
          expect(scopeAllows([grant], action)).toBe(true);
        },
      ),
    );
  });

  // Completeness on a finite universe: grants over verbs {*, r, w} and
  // segments {a, b} up to depth 2, actions over an extra fresh verb and
  // segment up to depth 3. The fresh verb and segment are the witnesses that
  // the exactness argument in docs/scope-grammar.md uses, so on this universe
  // scopeIsSubset must equal the semantic subset relation exactly.
  describe("on a small universe", () => {
    const smallSegs = ["a", "b"];
    const paths1 = smallSegs.map((s) => [s]);
    const paths2 = paths1.flatMap((p) => smallSegs.map((s) => [...p, s]));
    const smallGrants: Grant[] = ["*", "r", "w"].flatMap((verb) => [
      { verb, resource: { kind: "any" } as const },
      ...[...paths1, ...paths2].flatMap((segments) => [
        { verb, resource: { kind: "exact", segments } as const },
        { verb, resource: { kind: "prefix", segments } as const },
      ]),
    ]);
    const actionSegs = [...smallSegs, "z"];
    let actionPaths: string[][] = [[]];
    const allPaths: string[][] = [];
    for (let depth = 1; depth <= 3; depth++) {
      actionPaths = actionPaths.flatMap((p) => actionSegs.map((s) => [...p, s]));
      allPaths.push(...actionPaths);
    }
    const universe: Action[] = ["r", "w", "fresh"].flatMap((verb) =>
      allPaths.map((segments) => ({ verb, path: segments.join("/") })),
    );
    const smallScope = fc.uniqueArray(fc.constantFrom(...smallGrants), {
      minLength: 1,
      maxLength: 4,
      selector: formatGrant,
    });
    const semanticSubset = (child: Grant[], parent: Grant[]) =>
      universe.every((a) => !scopeAllows(child, a) || scopeAllows(parent, a));

    it("scopeIsSubset equals the semantic subset relation", () => {
      let subsets = 0;
      fc.assert(
        fc.property(smallScope, smallScope, (child, parent) => {
          const semantic = semanticSubset(child, parent);
          if (semantic) subsets++;
          expect(scopeIsSubset(child, parent).ok).toBe(semantic);
        }),
        { numRuns: 2000 },
      );
      expect(subsets).toBeGreaterThan(50);
    });

    it("single grants: grantCovers equals semantic coverage (exhaustive)", () => {
      for (const p of smallGrants) {
        for (const c of smallGrants) expect(grantCovers(p, c)).toBe(semanticSubset([c], [p]));
      }
    });

    it("intersectScopes allows exactly what both scopes allow, without redundancy", () => {
      fc.assert(
        fc.property(smallScope, smallScope, (a, b) => {
          const both = intersectScopes(a, b);
          for (const action of universe) {
            expect(scopeAllows(both, action)).toBe(scopeAllows(a, action) && scopeAllows(b, action));
          }
          both.forEach((x, i) => {
            both.forEach((y, j) => {
              if (i !== j) expect(grantCovers(y, x)).toBe(false);
            });
          });
        }),
        { numRuns: 500 },
      );
    });
  });
});

describe("GRANT_PATTERN", () => {
  const re = new RegExp(GRANT_PATTERN);
  const unicodeRe = new RegExp(GRANT_PATTERN, "u");
  const accepts = (s: string) => {
    try {
      parseGrant(s);
      return true;
    } catch (e) {
      if (e instanceof ValidationError) return false;
      throw e;
    }
  };

  it("uses no lookaround or backreferences (Go RE2 rejects them)", () => {
    expect(GRANT_PATTERN).not.toMatch(/\(\?[=!<]|\\[1-9]|\\k</);
    expect(GRANT_PATTERN.startsWith("^") && GRANT_PATTERN.endsWith("$")).toBe(true);
  });

  it("agrees with parseGrant on grammar-shaped random strings up to the length limit", () => {
    // Mostly near-grammatical: a verb-ish part, a colon, segment-ish parts
    // joined by "/"; sometimes arbitrary text, to cover everything else.
    const verbish = fc.oneof(
      fc.constantFrom("read", "*", "x-", "", "R", "**", "0a", "a".repeat(33)),
      fc.string({ maxLength: 3 }),
    );
    const segmentish = fc.oneof(
      { weight: 6, arbitrary: fc.constantFrom("a", "Z9", "~", "-_", "...", "a.b", ".x") },
      { weight: 3, arbitrary: fc.constantFrom("*", "", ".", "..", "a*", "%2F", "é", "😀", " ", "a:b", "?") },
      { weight: 1, arbitrary: fc.string({ maxLength: 3 }) },
    );
    const grantish = fc.oneof(
      {
        weight: 4,
        arbitrary: fc
          .tuple(verbish, fc.array(segmentish, { minLength: 1, maxLength: 4 }))
          .map(([verb, segments]) => `${verb}:${segments.join("/")}`),
      },
      { weight: 1, arbitrary: fc.string({ maxLength: 12 }) },
    );
    let accepted = 0;
    fc.assert(
      fc.property(grantish, (s) => {
        const expected = accepts(s);
        if (expected) accepted++;
        expect(re.test(s)).toBe(expected);
        expect(unicodeRe.test(s)).toBe(expected);
      }),
      { numRuns: 5000 },
    );
    expect(accepted).toBeGreaterThan(200);
  });

  it("agrees with parseGrant on generated valid grants", () => {
    fc.assert(
      fc.property(grantArb, (grant) => {
        expect(re.test(formatGrant(grant))).toBe(true);
      }),
    );
  });

  it("leaves the length limit to maxLength", () => {
    const long = `read:${"a".repeat(MAX_GRANT_LENGTH)}`;
    expect(re.test(long)).toBe(true);
    expect(accepts(long)).toBe(false);
  });

  it("does not backtrack catastrophically on long near-misses", () => {
    const nearMisses = [
      `read:${"a/".repeat(5000)}`,
      `read:${".".repeat(10000)}/*x`,
      `read:${"a.".repeat(5000)}*`,
      `read:${"./".repeat(5000)}a`,
      `${"a".repeat(10000)}`,
    ];
    const start = performance.now();
    for (const s of nearMisses) expect(re.test(s)).toBe(false);
    expect(performance.now() - start).toBeLessThan(1000);
  });
});
