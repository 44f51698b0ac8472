import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type DelegationInfo,
  decodeDelegationExtension,
  delegationEquals,
  encodeDelegationExtension,
  PRINCIPAL_KINDS,
} from "../../../core/x509/delegation-extension.ts";
import { integer, octetString, sequence, tlv, utf8String } from "../../../core/x509/der.ts";
import { X509Error } from "../../../core/x509/errors.ts";
import { sampleDelegation } from "./fixtures.ts";

const text = (max: number) =>
  fc.string({ unit: "grapheme", minLength: 1, maxLength: max }).filter((s) => [...s].length <= max);

const delegationArb: fc.Arbitrary<DelegationInfo> = fc.record({
  taskUid: text(128),
  delegator: fc.oneof(
    fc.record({ kind: fc.constantFrom(...PRINCIPAL_KINDS), name: text(256) }),
    fc.record({ kind: fc.constantFrom(...PRINCIPAL_KINDS), name: text(256), uid: text(128) }),
  ),
  scope: fc.uniqueArray(text(256), { minLength: 1, maxLength: 64 }),
  chainDigest: fc.uint8Array({ minLength: 32, maxLength: 32 }),
  chainDepth: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
  policyVersion: text(128),
  specDigest: fc.uint8Array({ minLength: 32, maxLength: 32 }),
});

/** Hand-assembled extension with one field swapped, to test the decoder on DER the encoder refuses to make. */
function assemble(parts: Partial<Record<string, Uint8Array>> = {}): Uint8Array {
  const d = {
    version: integer(1),
    taskUid: utf8String("uid"),
    delegator: sequence(utf8String("user"), utf8String("alice")),
    scope: sequence(utf8String("read:a")),
    chainDigest: octetString(new Uint8Array(32)),
    chainDepth: integer(0),
    policyVersion: utf8String("p1"),
    specDigest: octetString(new Uint8Array(32)),
    ...parts,
  };
  return sequence(...Object.values(d));
}

function decodeError(der: Uint8Array): X509Error {
  try {
    decodeDelegationExtension(der);
  } catch (e) {
    expect(e).toBeInstanceOf(X509Error);
    return e as X509Error;
  }
  throw new Error("decode unexpectedly succeeded");
}

describe("delegation extension", () => {
  it("round-trips a sample and starts with version 1", () => {
    const info = sampleDelegation();
    const der = encodeDelegationExtension(info);
    // SEQUENCE header (2-byte long form here) then INTEGER 1.
    expect(Array.from(der.subarray(0, 2))).toEqual([0x30, 0x81]);
    expect(Array.from(der.subarray(3, 6))).toEqual([0x02, 0x01, 0x01]);
    const back = decodeDelegationExtension(der);
    expect(back).toEqual(info);
    expect(delegationEquals(back, info)).toBe(true);
  });

  it("omits the optional delegator uid when absent", () => {
    const info = sampleDelegation({
      delegator: { kind: "serviceaccount", name: "system:serviceaccount:ns:ci" },
    });
    const back = decodeDelegationExtension(encodeDelegationExtension(info));
    expect(back.delegator).toEqual({ kind: "serviceaccount", name: "system:serviceaccount:ns:ci" });
    expect("uid" in back.delegator).toBe(false);
  });

  it("round-trips every valid delegation (property)", () => {
    fc.assert(
      fc.property(delegationArb, (info) => {
        const der = encodeDelegationExtension(info);
        const back = decodeDelegationExtension(der);
        expect(delegationEquals(back, info)).toBe(true);
        // Canonical: re-encoding the decoded value gives identical bytes.
        expect(encodeDelegationExtension(back)).toEqual(der);
      }),
      { numRuns: 300 },
    );
  });

  it("rejects every truncation of a valid encoding (property)", () => {
    fc.assert(
      fc.property(delegationArb, fc.nat(), (info, cut) => {
        const der = encodeDelegationExtension(info);
        const truncated = der.subarray(0, cut % der.length);
        expect(() => decodeDelegationExtension(truncated)).toThrow(X509Error);
      }),
      { numRuns: 200 },
    );
  });

  it("never throws anything but X509Error on random bytes (property)", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
        try {
          decodeDelegationExtension(bytes);
        } catch (e) {
          expect(e).toBeInstanceOf(X509Error);
        }
      }),
    );
  });

  it("accepts the hand-assembled baseline", () => {
    expect(decodeDelegationExtension(assemble()).taskUid).toBe("uid");
  });

  it.each([
    [
      "trailing bytes after the SEQUENCE",
      () => {
        const d = assemble();
        const out = new Uint8Array(d.length + 1);
        out.set(d);
        return out;
      },
      "delegation",
      /trailing/,
    ],
    [
      "extra field inside the SEQUENCE",
      () => sequence(assemble().subarray(2), utf8String("x")),
      "delegation",
      /trailing/,
    ],
    ["version 2", () => assemble({ version: integer(2) }), "delegation.version", /unsupported version 2/],
    [
      "version as UTF8String",
      () => assemble({ version: utf8String("1") }),
      "delegation.version",
      /expected INTEGER/,
    ],
    [
      "non-minimal version INTEGER",
      () => assemble({ version: tlv(0x02, new Uint8Array([0, 1])) }),
      "delegation.version",
      /minimal/,
    ],
    [
      "chainDigest of 31 bytes",
      () => assemble({ chainDigest: octetString(new Uint8Array(31)) }),
      "delegation.chainDigest",
      /exactly 32/,
    ],
    [
      "specDigest of 33 bytes",
      () => assemble({ specDigest: octetString(new Uint8Array(33)) }),
      "delegation.specDigest",
      /exactly 32/,
    ],
    [
      "negative chainDepth",
      () => assemble({ chainDepth: tlv(0x02, new Uint8Array([0xff])) }),
      "delegation.chainDepth",
      /negative/,
    ],
    [
      "unknown principal kind",
      () => assemble({ delegator: sequence(utf8String("robot"), utf8String("r2")) }),
      "delegation.delegator.kind",
      /one of/,
    ],
    [
      "principal with extra field",
      () =>
        assemble({
          delegator: sequence(utf8String("user"), utf8String("a"), utf8String("u"), utf8String("x")),
        }),
      "delegation.delegator",
      /trailing/,
    ],
    ["empty scope", () => assemble({ scope: sequence() }), "delegation.scope", /1\.\.64/],
    [
      "duplicate grant",
      () => assemble({ scope: sequence(utf8String("read:a"), utf8String("read:a")) }),
      "delegation.scope[1]",
      /duplicate/,
    ],
    ["empty taskUid", () => assemble({ taskUid: utf8String("") }), "delegation.taskUid", /empty/],
    [
      "invalid UTF-8",
      () => assemble({ taskUid: tlv(0x0c, new Uint8Array([0xc3, 0x28])) }),
      "delegation.taskUid",
      /UTF-8/,
    ],
    ["indefinite length", () => new Uint8Array([0x30, 0x80, 0x00, 0x00]), "delegation", /indefinite/],
    [
      "non-minimal length",
      () => {
        const inner = assemble().subarray(2);
        return new Uint8Array([0x30, 0x81, inner.length, ...inner]);
      },
      "delegation",
      /minimal/,
    ],
  ])("rejects %s", (_name, make, field, message) => {
    const err = decodeError(make());
    expect(err.field).toBe(field);
    expect(err.message).toMatch(message);
  });

  it.each([
    ["short chainDigest", { chainDigest: new Uint8Array(16) }, "delegation.chainDigest"],
    ["fractional chainDepth", { chainDepth: 1.5 }, "delegation.chainDepth"],
    ["65 grants", { scope: Array.from({ length: 65 }, (_, i) => `read:r${i}`) }, "delegation.scope"],
    ["grant longer than 256", { scope: [`read:${"a".repeat(252)}`] }, "delegation.scope[0]"],
    ["bad kind", { delegator: { kind: "robot", name: "x" } as never }, "delegation.delegator.kind"],
    ["lone surrogate", { policyVersion: "v\ud800" }, "delegation.policyVersion"],
  ])("encoder rejects %s", (_name, overrides, field) => {
    expect(() => encodeDelegationExtension(sampleDelegation(overrides as Partial<DelegationInfo>))).toThrow(
      expect.objectContaining({ field }),
    );
  });
});
