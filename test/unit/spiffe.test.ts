import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ValidationError } from "../../core/errors.ts";
import {
  buildTaskSpiffeId,
  DEFAULT_TRUST_DOMAIN,
  parseSpiffeId,
  parseTaskSpiffeId,
  type TaskIdentity,
  validateDnsLabel,
  validateTrustDomain,
} from "../../core/spiffe.ts";

function errorOf(fn: () => unknown): ValidationError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ValidationError) return e;
    throw e;
  }
  throw new Error("expected a ValidationError");
}

const task: TaskIdentity = {
  trustDomain: DEFAULT_TRUST_DOMAIN,
  namespace: "team-a",
  agent: "coder",
  task: "t-1",
};

describe("buildTaskSpiffeId", () => {
  it("builds the fixed layout", () => {
    expect(buildTaskSpiffeId(task)).toBe("spiffe://custody.local/ns/team-a/agent/coder/task/t-1");
  });

  it("accepts a 63-character name and a 255-byte trust domain", () => {
    const name = "a".repeat(63);
    const trustDomain = `${"a".repeat(63)}.`.repeat(4).slice(0, 255);
    const id = buildTaskSpiffeId({ trustDomain, namespace: name, agent: name, task: name });
    expect(parseTaskSpiffeId(id)).toEqual({ trustDomain, namespace: name, agent: name, task: name });
  });

  it.each([
    [{ task: "a".repeat(64) }, "task", "dns-label-max-length"],
    [{ agent: "Coder" }, "agent", "dns-label"],
    [{ agent: "cöder" }, "agent", "dns-label"],
    [{ agent: "代理" }, "agent", "dns-label"],
    [{ namespace: "" }, "namespace", "dns-label"],
    [{ namespace: "-a" }, "namespace", "dns-label"],
    [{ namespace: "a-" }, "namespace", "dns-label"],
    [{ namespace: "a.b" }, "namespace", "dns-label"],
    [{ task: ".." }, "task", "dns-label"],
    [{ task: "a/b" }, "task", "dns-label"],
    [{ task: "a%2Fb" }, "task", "dns-label"],
    [{ task: "a_b" }, "task", "dns-label"],
    [{ trustDomain: "Custody.local" }, "trustDomain", "trust-domain-charset"],
    [{ trustDomain: "" }, "trustDomain", "trust-domain-empty"],
    [{ trustDomain: "a".repeat(256) }, "trustDomain", "trust-domain-max-length"],
    [{ trustDomain: "exämple.org" }, "trustDomain", "trust-domain-charset"],
    [{ trustDomain: "example.org:8443" }, "trustDomain", "port"],
    [{ trustDomain: "me@example.org" }, "trustDomain", "userinfo"],
    [{ trustDomain: "ex%41mple.org" }, "trustDomain", "percent-encoding"],
  ])("rejects %j in field %s with rule %s", (patch, field, rule) => {
    const e = errorOf(() => buildTaskSpiffeId({ ...task, ...patch }));
    expect(e.field).toBe(field);
    expect(e.rule).toBe(rule);
    expect(e.message).toContain(field);
  });
});

describe("parseSpiffeId", () => {
  it.each([
    ["spiffe://example.org", { trustDomain: "example.org", path: "", segments: [] }],
    ["spiffe://example.org/a", { trustDomain: "example.org", path: "/a", segments: ["a"] }],
    [
      "spiffe://my_td-1.example/A.b/c-D_e/...",
      { trustDomain: "my_td-1.example", path: "/A.b/c-D_e/...", segments: ["A.b", "c-D_e", "..."] },
    ],
  ])("parses %s", (uri, expected) => {
    expect(parseSpiffeId(uri)).toEqual(expected);
  });

  it.each([
    ["", "scheme"],
    ["http://example.org/a", "scheme"],
    ["SPIFFE://example.org/a", "scheme"],
    ["spiffe:/example.org/a", "scheme"],
    ["spiffe://", "trust-domain-empty"],
    ["spiffe:///a", "trust-domain-empty"],
    ["spiffe://Example.org/a", "trust-domain-charset"],
    ["spiffe://example.org:443/a", "port"],
    ["spiffe://user@example.org/a", "userinfo"],
    ["spiffe://example.org?x=1", "query"],
    ["spiffe://example.org/a?x=1", "query"],
    ["spiffe://example.org/a#frag", "fragment"],
    ["spiffe://example.org/a%20b", "percent-encoding"],
    ["spiffe://example.org/", "trailing-slash"],
    ["spiffe://example.org/a/", "trailing-slash"],
    ["spiffe://example.org//a", "empty-segment"],
    ["spiffe://example.org/a//b", "empty-segment"],
    ["spiffe://example.org/a/./b", "dot-segment"],
    ["spiffe://example.org/a/../b", "dot-segment"],
    ["spiffe://example.org/..", "dot-segment"],
    ["spiffe://example.org/a b", "segment-charset"],
    ["spiffe://example.org/a~b", "segment-charset"],
    ["spiffe://example.org/ünïcode", "segment-charset"],
    ["spiffe://example.org/emoji-😀", "segment-charset"],
    [`spiffe://example.org/${"a".repeat(2048 - 20)}`, "max-length"],
    [`spiffe://${"a".repeat(256)}/a`, "trust-domain-max-length"],
  ])("rejects %j with rule %s", (uri, rule) => {
    const e = errorOf(() => parseSpiffeId(uri, "status.spiffeId"));
    expect(e.rule).toBe(rule);
    expect(e.field).toBe("status.spiffeId");
  });

  it("accepts an ID of exactly 2048 bytes", () => {
    const uri = `spiffe://example.org/${"a".repeat(2048 - 21)}`;
    expect(uri.length).toBe(2048);
    expect(parseSpiffeId(uri).segments[0]).toHaveLength(2027);
  });

  it("rejects non-strings", () => {
    expect(errorOf(() => parseSpiffeId(42)).rule).toBe("type");
    expect(errorOf(() => validateTrustDomain(null)).rule).toBe("type");
    expect(errorOf(() => validateDnsLabel(undefined, "agent")).rule).toBe("type");
  });
});

describe("parseTaskSpiffeId", () => {
  it.each([
    "spiffe://custody.local/ns/a/agent/b",
    "spiffe://custody.local/ns/a/agent/b/task/c/extra",
    "spiffe://custody.local/namespace/a/agent/b/task/c",
    "spiffe://custody.local/ns/a/task/b/agent/c",
    "spiffe://custody.local",
  ])("rejects the non-task layout %s", (uri) => {
    expect(errorOf(() => parseTaskSpiffeId(uri)).rule).toBe("task-layout");
  });

  it("rejects SPIFFE-valid names that are not DNS labels", () => {
    const e = errorOf(() => parseTaskSpiffeId("spiffe://custody.local/ns/Team_A/agent/b/task/c"));
    expect(e.rule).toBe("dns-label");
    expect(e.field).toBe("spiffeId namespace");
  });

  const dnsLabel = fc.stringMatching(/^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$/);
  const trustDomain = fc.stringMatching(/^[a-z0-9._-]{1,255}$/);

  it("round-trips build and parse (property)", () => {
    fc.assert(
      fc.property(trustDomain, dnsLabel, dnsLabel, dnsLabel, (td, namespace, agent, t) => {
        const id: TaskIdentity = { trustDomain: td, namespace, agent, task: t };
        const uri = buildTaskSpiffeId(id);
        expect(parseTaskSpiffeId(uri)).toEqual(id);
        expect(parseSpiffeId(uri).segments).toEqual(["ns", namespace, "agent", agent, "task", t]);
      }),
    );
  });

  it("never accepts a name that is not a DNS label (property)", () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 70, unit: "binary" }), (name) => {
        const valid = /^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?$/.test(name) && name.length <= 63;
        const build = () => buildTaskSpiffeId({ ...task, agent: name });
        if (valid) expect(parseTaskSpiffeId(build()).agent).toBe(name);
        else expect(build).toThrow(ValidationError);
      }),
      { numRuns: 500 },
    );
  });
});
