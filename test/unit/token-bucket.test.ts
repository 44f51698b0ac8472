import { describe, expect, it } from "vitest";
import { fullBucket, takeToken } from "../../shells/token-bucket.ts";

describe("takeToken", () => {
  it("gives a full bucket's burst at once, then tokens at the rate, never more than the burst", () => {
    const b = fullBucket(3, 0);
    expect([0, 0, 0, 0].map(() => takeToken(b, 2, 3, 0))).toEqual([true, true, true, false]);
    // 2 per second: one more after 500 ms, none before.
    expect(takeToken(b, 2, 3, 400)).toBe(false);
    expect(takeToken(b, 2, 3, 500)).toBe(true);
    // A long pause refills to the burst, not beyond.
    expect([1, 2, 3, 4].map(() => takeToken(b, 2, 3, 60_000))).toEqual([true, true, true, false]);
  });
});
