import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ValidationError } from "../../core/errors.ts";
import { canonicalBytes, canonicalize, canonicalMembers } from "../../core/provenance/canonical-json.ts";

function doubleFromBits(hex: string): number {
  const view = new DataView(new ArrayBuffer(8));
  view.setBigUint64(0, BigInt(`0x${hex}`));
  return view.getFloat64(0);
}

// The §3.2.2 sample input, as JSON text (333333333.33333329 has more digits than a double keeps).
const RFC_SAMPLE =
  '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],' +
  ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",' +
  ' "literals": [null, true, false]}';

describe("canonicalize: RFC 8785 vectors", () => {
  // RFC 8785 Appendix B: IEEE 754 bit patterns and the text JCS must write.
  it.each([
    ["0000000000000000", "0"],
    ["8000000000000000", "0"],
    ["0000000000000001", "5e-324"],
    ["8000000000000001", "-5e-324"],
    ["7fefffffffffffff", "1.7976931348623157e+308"],
    ["ffefffffffffffff", "-1.7976931348623157e+308"],
    ["4340000000000000", "9007199254740992"],
    ["c340000000000000", "-9007199254740992"],
    ["4430000000000000", "295147905179352830000"],
    ["44b52d02c7e14af5", "9.999999999999997e+22"],
    ["44b52d02c7e14af6", "1e+23"],
    ["44b52d02c7e14af7", "1.0000000000000001e+23"],
    ["444b1ae4d6e2ef4e", "999999999999999700000"],
    ["444b1ae4d6e2ef4f", "999999999999999900000"],
    ["444b1ae4d6e2ef50", "1e+21"],
    ["3eb0c6f7a0b5ed8c", "9.999999999999997e-7"],
    ["3eb0c6f7a0b5ed8d", "0.000001"],
    ["41b3de4355555553", "333333333.3333332"],
    ["41b3de4355555554", "333333333.33333325"],
    ["41b3de4355555555", "333333333.3333333"],
    ["41b3de4355555556", "333333333.3333334"],
    ["41b3de4355555557", "333333333.33333343"],
    ["becbf647612f3696", "-0.0000033333333333333333"],
    ["43143ff3c1cb0959", "1424953923781206.2"],
  ])("writes the double with bits %s as %s", (bits, expected) => {
    expect(canonicalize(doubleFromBits(bits))).toBe(expected);
    expect(canonicalize([doubleFromBits(bits)])).toBe(`[${expected}]`);
  });

  it.each([
    ["NaN", "7fffffffffffffff"],
    ["Infinity", "7ff0000000000000"],
    ["-Infinity", "fff0000000000000"],
  ])("refuses %s (Appendix B, no JSON representation)", (_name, bits) => {
    expect(() => canonicalize({ n: [1, doubleFromBits(bits)] })).toThrow(
      expect.objectContaining({ field: "$.n[1]", rule: "finite-number" }),
    );
  });

  it("canonicalizes the §3.2.2 sample (numbers, string escapes, literals)", () => {
    const input = JSON.parse(RFC_SAMPLE);
    const expected =
      '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],' +
      '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}';
    expect(canonicalize(input)).toBe(expected);
  });

  it("writes the §3.2.2 sample as the UTF-8 bytes of §3.2.4", () => {
    const input = JSON.parse(RFC_SAMPLE);
    // The hex dump printed in §3.2.4.
    const rfcHex = `
      7b 22 6c 69 74 65 72 61 6c 73 22 3a 5b 6e 75 6c 6c 2c 74 72
      75 65 2c 66 61 6c 73 65 5d 2c 22 6e 75 6d 62 65 72 73 22 3a
      5b 33 33 33 33 33 33 33 33 33 2e 33 33 33 33 33 33 33 2c 31
      65 2b 33 30 2c 34 2e 35 2c 30 2e 30 30 32 2c 31 65 2d 32 37
      5d 2c 22 73 74 72 69 6e 67 22 3a 22 e2 82 ac 24 5c 75 30 30
      30 66 5c 6e 41 27 42 5c 22 5c 5c 5c 5c 5c 22 2f 22 7d`;
    expect(Buffer.from(canonicalBytes(input)).toString("hex")).toBe(rfcHex.replace(/\s+/g, ""));
  });

  it("sorts property names by UTF-16 code units (§3.2.3 sample)", () => {
    const input = JSON.parse(
      '{"\\u20ac": "Euro Sign", "\\r": "Carriage Return", "\\ufb33": "Hebrew Letter Dalet With Dagesh",' +
        ' "1": "One", "\\ud83d\\ude00": "Emoji: Grinning Face", "\\u0080": "Control",' +
        ' "\\u00f6": "Latin Small Letter O With Diaeresis"}',
    );
    // Read the order from the text: JSON.parse would move the integer-like name "1" first.
    const names = [...canonicalize(input).matchAll(/"((?:[^"\\]|\\.)*)":/g)].map((m) =>
      JSON.parse(`"${m[1]}"`),
    );
    expect(names.map((n: string) => n.codePointAt(0)!.toString(16))).toEqual([
      "d",
      "31",
      "80",
      "f6",
      "20ac",
      "1f600",
      "fb33",
    ]);
  });

  // The cyberphone/json-canonicalization testdata set (the RFC authors' reference vectors).
  it.each([
    ["arrays", '[56, {"d": true, "10": null, "1": []}]', '[56,{"1":[],"10":null,"d":true}]'],
    [
      "french",
      '{"peach": "This sorting order", "péché": "is wrong according to French", "pêche": "but canonicalization MUST", "sin": "ignore locale"}',
      '{"peach":"This sorting order","péché":"is wrong according to French","pêche":"but canonicalization MUST","sin":"ignore locale"}',
    ],
    [
      "structures",
      '{"1": {"f": {"f": "hi","F": 5} ,"\\n": 56.0}, "10": { }, "": "empty", "a": { }, "111": [ {"e": "yes","E": "no" } ], "A": { }}',
      '{"":"empty","1":{"\\n":56,"f":{"F":5,"f":"hi"}},"10":{},"111":[{"E":"no","e":"yes"}],"A":{},"a":{}}',
    ],
    ["unicode", '{"Unnormalized Unicode":"A\\u030a"}', '{"Unnormalized Unicode":"A\u030a"}'],
    [
      "weird",
      '{"\\u20ac": "Euro Sign", "\\r": "Carriage Return", "\\u000a": "Newline", "1": "One", "\\u0080": "Control\\u007f", "\\ud83d\\ude02": "Smiley", "\\u00f6": "Latin Small Letter O With Diaeresis", "\\ufb33": "Hebrew Letter Dalet With Dagesh", "</script>": "Browser Challenge"}',
      '{"\\n":"Newline","\\r":"Carriage Return","1":"One","</script>":"Browser Challenge","\u0080":"Control\u007f","ö":"Latin Small Letter O With Diaeresis","€":"Euro Sign","\ud83d\ude02":"Smiley","\ufb33":"Hebrew Letter Dalet With Dagesh"}',
    ],
  ])("testdata %s", (_name, input, expected) => {
    expect(canonicalize(JSON.parse(input))).toBe(expected);
  });
});

describe("canonicalize: the I-JSON edges", () => {
  it("orders a supplementary character before U+E000 (UTF-16, not code points)", () => {
    expect(canonicalize({ "\ue000": 1, "\ud800\udc00": 2 })).toBe('{"\ud800\udc00":2,"\ue000":1}');
  });

  it("writes -0 as 0", () => {
    expect(canonicalize(-0)).toBe("0");
    expect(canonicalize({ z: -0 })).toBe('{"z":0}');
  });

  it("escapes every control character, short forms where JSON has them, and nothing else", () => {
    const all = Array.from({ length: 0x20 }, (_, i) => String.fromCharCode(i)).join("") + '"\\/\u007f\u2028';
    expect(canonicalize(all)).toBe(
      '"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007\\b\\t\\n\\u000b\\f\\r\\u000e\\u000f' +
        "\\u0010\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016\\u0017\\u0018\\u0019\\u001a\\u001b\\u001c\\u001d\\u001e\\u001f" +
        '\\"\\\\/\u007f\u2028"',
    );
  });

  it("refuses lone surrogates in values and in names, naming the path", () => {
    expect(() => canonicalize({ a: ["ok", "x\ud800"] })).toThrow(
      expect.objectContaining({ field: "$.a[1]", rule: "well-formed-unicode" }),
    );
    expect(() => canonicalize({ "\udc00": 1 })).toThrow(ValidationError);
    expect(() => canonicalize(JSON.parse('"\\udead"'))).toThrow(/lone surrogates/);
    // A bad name is named before its bad value, by every entry point.
    const both = { "\ud800": "\udc00" };
    for (const f of [() => canonicalize(both), () => canonicalMembers(both)])
      expect(f).toThrow(expect.objectContaining({ field: "$", rule: "well-formed-unicode" }));
    expect(() => canonicalMembers({ ok: { deep: ["\udc00"] } })).toThrow(
      expect.objectContaining({ field: "$.ok.deep[0]", rule: "well-formed-unicode" }),
    );
  });

  it("leaves out undefined members but refuses other non-JSON values", () => {
    expect(canonicalize({ b: undefined, a: 1 })).toBe('{"a":1}');
    expect(() => canonicalize([1, undefined])).toThrow(
      expect.objectContaining({ field: "$[1]", rule: "json-type" }),
    );
    expect(() => canonicalize({ n: 1n })).toThrow(
      expect.objectContaining({ field: "$.n", rule: "json-type" }),
    );
    expect(() => canonicalize({ d: new Date(0) })).toThrow(expect.objectContaining({ field: "$.d" }));
    expect(() => canonicalize({ m: new Map() })).toThrow(ValidationError);
    expect(() => canonicalize(() => 1)).toThrow(ValidationError);
  });

  it("accepts null-prototype objects", () => {
    const o = Object.create(null) as Record<string, number>;
    o.b = 2;
    o.a = 1;
    expect(canonicalize(o)).toBe('{"a":1,"b":2}');
  });
});

describe("canonicalize: properties", () => {
  const json = fc.jsonValue({ stringUnit: "grapheme", maxDepth: 4 });

  it("agrees with JSON.stringify on every leaf and sorts names by UTF-16 code units", () => {
    // An independent oracle: JSON.stringify's number and string forms are the ones JCS adopts.
    const oracle = (v: unknown): string => {
      if (Array.isArray(v)) return `[${v.map(oracle).join(",")}]`;
      if (v !== null && typeof v === "object") {
        const names = Object.keys(v).sort((a, b) => {
          for (let i = 0; i < Math.min(a.length, b.length); i++) {
            const d = a.charCodeAt(i) - b.charCodeAt(i);
            if (d !== 0) return d;
          }
          return a.length - b.length;
        });
        return `{${names.map((n) => `${JSON.stringify(n)}:${oracle((v as Record<string, unknown>)[n])}`).join(",")}}`;
      }
      return JSON.stringify(v);
    };
    fc.assert(fc.property(json, (v) => canonicalize(v) === oracle(v)));
  });

  it("is a fixed point: canonical text parses back to the same canonical text", () => {
    fc.assert(
      fc.property(json, (v) => {
        const c = canonicalize(v);
        return canonicalize(JSON.parse(c)) === c;
      }),
    );
  });

  it("does not depend on member insertion order", () => {
    fc.assert(
      fc.property(fc.dictionary(fc.string(), fc.integer()), (d) => {
        const reversed = Object.fromEntries(Object.entries(d).reverse());
        return canonicalize(d) === canonicalize(reversed);
      }),
    );
  });
});
