// Operator settings outside JWT: the chain depth cap's default and bounds,
// refused at start with the variable named.
import { describe, expect, it } from "vitest";
import { DEFAULT_MAX_DEPTH } from "../../core/chain.ts";
import { loadOperatorConfig } from "../../operator/config.ts";

const base = { CUSTODY_KAFKA_BROKERS: "127.0.0.1:9092" };

describe("operator configuration: the delegation depth cap", () => {
  it("defaults to 5 and takes another value from CUSTODY_MAX_CHAIN_DEPTH", () => {
    expect(loadOperatorConfig(base).maxChainDepth).toBe(DEFAULT_MAX_DEPTH);
    expect(DEFAULT_MAX_DEPTH).toBe(5);
    expect(loadOperatorConfig({ ...base, CUSTODY_MAX_CHAIN_DEPTH: "2" }).maxChainDepth).toBe(2);
  });

  it.each(["0", "31", "2.5", "deep"])("refuses %s, naming the variable", (value) => {
    expect(() => loadOperatorConfig({ ...base, CUSTODY_MAX_CHAIN_DEPTH: value })).toThrow(
      /CUSTODY_MAX_CHAIN_DEPTH/,
    );
  });
});
