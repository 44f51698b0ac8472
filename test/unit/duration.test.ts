import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  DEFAULT_TTL,
  formatDuration,
  MAX_TTL_MS,
  MIN_TTL_MS,
  parseTtl,
  TTL_PATTERN,
} from "../../core/duration.ts";
import { ValidationError } from "../../core/errors.ts";

function ruleOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof ValidationError) return e.rule;
    throw e;
  }
  throw new Error("expected a ValidationError");
}

describe("parseTtl", () => {
  it.each([
    ["1h", 3_600_000],
    ["5m", MIN_TTL_MS],
    ["24h", MAX_TTL_MS],
    ["300s", MIN_TTL_MS],
    ["90m", 5_400_000],
    ["1h30m", 5_400_000],
    ["1h30m15s", 5_415_000],
    ["1h15s", 3_615_000],
    ["23h59m59s", MAX_TTL_MS - 1000],
    ["0h10m", 600_000],
    ["05m", MIN_TTL_MS],
    ["86400s", MAX_TTL_MS],
  ])("accepts %s", (text, ms) => {
    expect(parseTtl(text)).toBe(ms);
  });

  it.each([
    ["", "format"],
    ["1", "format"],
    ["h", "format"],
    ["1d", "format"],
    ["1.5h", "format"],
    ["30m1h", "format"],
    ["1h1h", "format"],
    ["1H", "format"],
    [" 1h", "format"],
    ["1h ", "format"],
    ["-1h", "format"],
    ["1m30", "format"],
    ["1ms", "format"],
    ["١h", "format"], // Arabic-Indic digit one: \d must stay ASCII
    [`${"0".repeat(100)}1h`, "format"],
    ["4m59s", "min"],
    ["0s", "min"],
    ["0h0m0s", "min"],
    ["24h1s", "max"],
    ["25h", "max"],
    ["1441m", "max"],
    ["99999999999999999999999h", "max"],
  ])("rejects %j with rule %s", (text, rule) => {
    expect(ruleOf(() => parseTtl(text))).toBe(rule);
  });

  it("rejects non-strings and names the field", () => {
    try {
      parseTtl(3600, "spec.ttl");
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(ValidationError);
      expect((e as ValidationError).field).toBe("spec.ttl");
      expect((e as ValidationError).rule).toBe("type");
    }
  });

  it("names the given field in the error message", () => {
    expect(() => parseTtl("2d", "spec.ttl")).toThrow(/^spec\.ttl: .*rule format/);
  });

  it("has a default inside the range", () => {
    expect(parseTtl(DEFAULT_TTL)).toBe(3_600_000);
  });

  it("accepts exactly the whole-second values in range (property)", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 30 * 3600 }), (seconds) => {
        const ms = seconds * 1000;
        const text = `${seconds}s`;
        if (ms >= MIN_TTL_MS && ms <= MAX_TTL_MS) expect(parseTtl(text)).toBe(ms);
        else expect(() => parseTtl(text)).toThrow(ValidationError);
      }),
    );
  });

  it("TTL_PATTERN agrees with the grammar's format check (property)", () => {
    const re = new RegExp(TTL_PATTERN);
    const unicodeRe = new RegExp(TTL_PATTERN, "u");
    const piece = fc.oneof(
      fc.constantFrom("h", "m", "s", "d", "1", "0", "30", " ", ".", "-"),
      fc.string({ maxLength: 2 }),
    );
    fc.assert(
      fc.property(fc.array(piece, { maxLength: 8 }), (pieces) => {
        const text = pieces.join("");
        let formatOk = true;
        try {
          parseTtl(text);
        } catch (e) {
          formatOk = (e as ValidationError).rule !== "format";
        }
        expect(re.test(text)).toBe(formatOk);
        expect(unicodeRe.test(text)).toBe(formatOk);
      }),
      { numRuns: 2000 },
    );
  });
});

describe("formatDuration", () => {
  it.each([
    [0, "0s"],
    [250, "250ms"],
    [1500, "1.5s"],
    [45_000, "45s"],
    [MIN_TTL_MS, "5m"],
    [3_600_000, "1h"],
    [5_400_000, "1h30m"],
    [3_615_000, "1h15s"],
    [MAX_TTL_MS, "24h"],
    [-120_000, "-2m"],
  ])("formats %d as %s", (ms, text) => {
    expect(formatDuration(ms)).toBe(text);
  });

  it("rejects non-finite input", () => {
    expect(() => formatDuration(Number.NaN)).toThrow(RangeError);
  });

  it("round-trips whole seconds in the TTL range (property)", () => {
    fc.assert(
      fc.property(fc.integer({ min: MIN_TTL_MS / 1000, max: MAX_TTL_MS / 1000 }), (seconds) => {
        expect(parseTtl(formatDuration(seconds * 1000))).toBe(seconds * 1000);
      }),
    );
  });
});
