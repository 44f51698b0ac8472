import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  AgentTaskSpecSchema,
  formatFieldPath,
  parseAgentTask,
  parseAgentTaskSpec,
} from "../../core/api/v1alpha1.ts";
import { ValidationError } from "../../core/errors.ts";

const minimal = {
  agent: { name: "coder" },
  scope: ["read:repos/acme/*"],
  serviceAccountName: "agent-sa",
};

const full = {
  agent: {
    name: "coder",
    model: { provider: "anthropic", name: "claude-sonnet-4-5", version: "20250929" },
    tools: [
      { name: "github.create_issue", version: "1.0" },
      { name: "shell", version: "2" },
    ],
    labels: { team: "infra", "cost-center": "42" },
  },
  delegator: { kind: "ServiceAccount", name: "ci-bot", namespace: "ci" },
  parentRef: { name: "parent-task" },
  scope: ["read:repos/acme/*", "write:repos/acme/api/issues", "*:tickets/*"],
  audiences: ["https://api.example.com"],
  ttl: "1h30m",
  deadline: "2030-01-01T00:00:00Z",
  serviceAccountName: "agent-sa",
  revoked: true,
  revocationReason: "work finished",
};

/** Parses `spec` and returns the ValidationError it must throw. */
function rejection(spec: unknown): ValidationError {
  try {
    parseAgentTaskSpec(spec);
  } catch (e) {
    expect(e).toBeInstanceOf(ValidationError);
    return e as ValidationError;
  }
  throw new Error(`expected ${JSON.stringify(spec)} to be rejected`);
}

function withSpec(patch: Record<string, unknown>): Record<string, unknown> {
  return { ...minimal, ...patch };
}

function withAgent(patch: Record<string, unknown>): Record<string, unknown> {
  return { ...minimal, agent: { ...minimal.agent, ...patch } };
}

describe("parseAgentTaskSpec accepts good specs", () => {
  it("applies the 1h ttl default to a minimal spec", () => {
    expect(parseAgentTaskSpec(minimal)).toEqual({ ...minimal, ttl: "1h" });
  });

  it("keeps every field of a full spec", () => {
    expect(parseAgentTaskSpec(full)).toEqual(full);
  });

  it.each(["5m", "24h", "300s", "0h5m", "1440m", "23h59m59s"])("accepts ttl %s (inside 5m..24h)", (ttl) => {
    expect(parseAgentTaskSpec(withSpec({ ttl })).ttl).toBe(ttl);
  });

  it.each(["2030-01-01T00:00:00Z", "2030-01-01T10:00:00+02:00", "2030-01-01T00:00:00.123Z"])(
    "accepts RFC 3339 deadline %s",
    (deadline) => {
      expect(parseAgentTaskSpec(withSpec({ deadline })).deadline).toBe(deadline);
    },
  );

  it("accepts a 63-character agent name and a dotted service account name", () => {
    const spec = parseAgentTaskSpec(
      withSpec({ agent: { name: "a".repeat(63) }, serviceAccountName: "a.b-c" }),
    );
    expect(spec.agent.name).toHaveLength(63);
  });

  it("accepts User and Group delegators without namespace, with any principal name", () => {
    expect(
      parseAgentTaskSpec(withSpec({ delegator: { kind: "User", name: "alice@example.com" } })).delegator,
    ).toEqual({ kind: "User", name: "alice@example.com" });
    expect(
      parseAgentTaskSpec(withSpec({ delegator: { kind: "Group", name: "system:authenticated" } })).delegator
        ?.kind,
    ).toBe("Group");
  });

  it("drops unknown fields the way the apiserver prunes them", () => {
    expect(parseAgentTaskSpec(withSpec({ extra: 1 }))).not.toHaveProperty("extra");
  });
});

describe("parseAgentTaskSpec rejects bad input, naming field and rule", () => {
  const cases: [string, unknown, string, string][] = [
    // [what, spec, field, rule]
    ["not an object", "nope", "spec", "type"],
    ["missing agent", { scope: ["read:a"], serviceAccountName: "sa" }, "spec.agent", "required"],
    ["missing scope", { agent: { name: "a" }, serviceAccountName: "sa" }, "spec.scope", "required"],
    [
      "missing serviceAccountName",
      { agent: { name: "a" }, scope: ["read:a"] },
      "spec.serviceAccountName",
      "required",
    ],
    ["unicode agent name", withAgent({ name: "agént" }), "spec.agent.name", "dns-label"],
    ["uppercase agent name", withAgent({ name: "Coder" }), "spec.agent.name", "dns-label"],
    ["overlong agent name", withAgent({ name: "a".repeat(64) }), "spec.agent.name", "dns-label-max-length"],
    ["agent name with SPIFFE-illegal /", withAgent({ name: "a/b" }), "spec.agent.name", "dns-label"],
    ["agent name with SPIFFE-illegal %", withAgent({ name: "a%2f" }), "spec.agent.name", "dns-label"],
    ["agent name ending in -", withAgent({ name: "a-" }), "spec.agent.name", "dns-label"],
    ["empty scope", withSpec({ scope: [] }), "spec.scope", "min-items"],
    [
      "65 grants",
      withSpec({ scope: Array.from({ length: 65 }, (_, i) => `read:r${i}`) }),
      "spec.scope",
      "max-items",
    ],
    [
      "grant without colon",
      withSpec({ scope: ["read:a", "read:b", "readall"] }),
      "spec.scope[2]",
      "missing-colon",
    ],
    ["dot-dot segment", withSpec({ scope: ["read:a/../b"] }), "spec.scope[0]", "dot-segment"],
    ["wildcard mid-path", withSpec({ scope: ["read:a/*/b"] }), "spec.scope[0]", "wildcard-position"],
    ["uppercase verb", withSpec({ scope: ["Read:a"] }), "spec.scope[0]", "verb"],
    ["space in segment", withSpec({ scope: ["read:a b"] }), "spec.scope[0]", "segment-charset"],
    ["overlong grant", withSpec({ scope: [`read:${"a".repeat(252)}`] }), "spec.scope[0]", "max-length"],
    ["non-string grant", withSpec({ scope: [7] }), "spec.scope[0]", "type"],
    ["duplicate grant", withSpec({ scope: ["read:a", "write:b", "read:a"] }), "spec.scope[2]", "duplicate"],
    ["ttl below 5m", withSpec({ ttl: "4m59s" }), "spec.ttl", "min"],
    ["ttl above 24h", withSpec({ ttl: "24h1s" }), "spec.ttl", "max"],
    ["ttl units out of order", withSpec({ ttl: "30m1h" }), "spec.ttl", "format"],
    ["ttl with days", withSpec({ ttl: "1d" }), "spec.ttl", "format"],
    ["ttl as number", withSpec({ ttl: 3600 }), "spec.ttl", "type"],
    ["deadline without time", withSpec({ deadline: "2030-01-01" }), "spec.deadline", "date-time"],
    ["deadline without offset", withSpec({ deadline: "2030-01-01T00:00:00" }), "spec.deadline", "date-time"],
    ["deadline in words", withSpec({ deadline: "tomorrow" }), "spec.deadline", "date-time"],
    [
      "bad delegator kind",
      withSpec({ delegator: { kind: "Robot", name: "r" } }),
      "spec.delegator.kind",
      "enum",
    ],
    [
      "namespace on a User delegator",
      withSpec({ delegator: { kind: "User", name: "alice", namespace: "ns" } }),
      "spec.delegator.namespace",
      "namespace-only-for-service-account",
    ],
    [
      "ServiceAccount name that is no DNS subdomain",
      withSpec({ delegator: { kind: "ServiceAccount", name: "Bad_Name", namespace: "ci" } }),
      "spec.delegator.name",
      "service-account-name",
    ],
    [
      "ServiceAccount without its namespace",
      withSpec({ delegator: { kind: "ServiceAccount", name: "pipeline" } }),
      "spec.delegator.namespace",
      "service-account-namespace",
    ],
    [
      "a service account spelled as a User",
      withSpec({ delegator: { kind: "User", name: "system:serviceaccount:ci:pipeline" } }),
      "spec.delegator.name",
      "user-not-service-account",
    ],
    [
      "a sensitive label that is not a label",
      withSpec({ agent: { name: "a", labels: { team: "x" }, sensitiveLabels: ["customer"] } }),
      "spec.agent.sensitiveLabels",
      "sensitive-label-exists",
    ],
    ["uppercase parent", withSpec({ parentRef: { name: "Parent" } }), "spec.parentRef.name", "dns-label"],
    [
      "uppercase service account",
      withSpec({ serviceAccountName: "SA" }),
      "spec.serviceAccountName",
      "pattern",
    ],
    [
      "duplicate tool names",
      withAgent({
        tools: [
          { name: "git", version: "1" },
          { name: "git", version: "2" },
        ],
      }),
      "spec.agent.tools[1].name",
      "duplicate",
    ],
    [
      "tool name with a space",
      withAgent({ tools: [{ name: "rm rf", version: "1" }] }),
      "spec.agent.tools[0].name",
      "pattern",
    ],
    [
      "model missing version",
      withAgent({ model: { provider: "p", name: "n" } }),
      "spec.agent.model.version",
      "required",
    ],
    ["label key with /", withAgent({ labels: { "a/b": "x" } }), 'spec.agent.labels["a/b"]', "pattern"],
    [
      "33 labels",
      withAgent({ labels: Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, "v"])) }),
      "spec.agent.labels",
      "max-properties",
    ],
    [
      "17 audiences",
      withSpec({ audiences: Array.from({ length: 17 }, (_, i) => `aud${i}`) }),
      "spec.audiences",
      "max-items",
    ],
    ["audience with space", withSpec({ audiences: ["a b"] }), "spec.audiences[0]", "pattern"],
    [
      "reason without revoked",
      withSpec({ revocationReason: "x" }),
      "spec.revocationReason",
      "reason-only-when-revoked",
    ],
    [
      "reason with revoked false",
      withSpec({ revoked: false, revocationReason: "x" }),
      "spec.revocationReason",
      "reason-only-when-revoked",
    ],
  ];

  it.each(cases)("%s", (_what, spec, field, rule) => {
    const error = rejection(spec);
    expect({ field: error.field, rule: error.rule }).toEqual({ field, rule });
    // The message leads with the field so a user sees where the problem is.
    expect(error.message.startsWith(`${field}: `)).toBe(true);
  });

  it("keeps the core parser's precise message for a bad grant", () => {
    expect(rejection(withSpec({ scope: ["read:ok", "read:a/../b"] })).message).toBe(
      'spec.scope[1]: grant "read:a/../b" has a ".." path segment (rule dot-segment)',
    );
  });

  it("keeps the core parser's message for an out-of-range ttl", () => {
    expect(rejection(withSpec({ ttl: "25h" })).message).toBe(
      "spec.ttl: ttl 25h is longer than the maximum 24h (rule max)",
    );
  });
});

describe("schema and core agree", () => {
  it("every generated scope of valid grants parses and round-trips", () => {
    const segment = fc.stringMatching(/^[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,8}$/);
    const grantArb = fc
      .tuple(
        fc.oneof(fc.constant("*"), fc.stringMatching(/^[a-z][a-z0-9-]{0,10}$/)),
        fc.oneof(
          fc.constant("*"),
          fc
            .tuple(fc.array(segment, { minLength: 1, maxLength: 4 }), fc.boolean())
            .map(([segs, prefix]) => segs.join("/") + (prefix ? "/*" : "")),
        ),
      )
      .map(([verb, resource]) => `${verb}:${resource}`);
    fc.assert(
      fc.property(fc.uniqueArray(grantArb, { minLength: 1, maxLength: 64 }), (scope) => {
        expect(parseAgentTaskSpec(withSpec({ scope })).scope).toEqual(scope);
      }),
    );
  });

  it("the zod schema itself rejects what parseAgentTaskSpec rejects", () => {
    expect(AgentTaskSpecSchema.safeParse(withSpec({ ttl: "1m" })).success).toBe(false);
    expect(AgentTaskSpecSchema.safeParse(withSpec({ scope: ["read:a//b"] })).success).toBe(false);
    expect(AgentTaskSpecSchema.safeParse(withSpec({ deadline: "2030-13-01T00:00:00Z" })).success).toBe(false);
  });

  it("any string with a character outside a DNS label is refused as agent name", () => {
    fc.assert(
      fc.property(
        fc.string({ minLength: 1, maxLength: 20 }).filter((s) => !/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(s)),
        (name) => {
          expect(rejection(withAgent({ name })).field).toBe("spec.agent.name");
        },
      ),
    );
  });
});

describe("parseAgentTask", () => {
  const task = {
    apiVersion: "custody.dev/v1alpha1",
    kind: "AgentTask",
    metadata: { name: "task-1", namespace: "default" },
    spec: minimal,
  };

  it("parses a whole object and defaults the spec", () => {
    expect(parseAgentTask(task).spec.ttl).toBe("1h");
  });

  it("rejects a task name that is not a DNS label (it becomes a SPIFFE ID segment)", () => {
    expect(() => parseAgentTask({ ...task, metadata: { name: "Task.1" } })).toThrow(
      expect.objectContaining({ field: "metadata.name", rule: "dns-label" }),
    );
    expect(() => parseAgentTask({ ...task, metadata: { name: "t".repeat(64) } })).toThrow(
      expect.objectContaining({ field: "metadata.name", rule: "dns-label-max-length" }),
    );
  });

  it("rejects a wrong apiVersion and names the status field of a bad status", () => {
    expect(() => parseAgentTask({ ...task, apiVersion: "custody.dev/v1" })).toThrow(
      expect.objectContaining({ field: "apiVersion" }),
    );
    expect(() => parseAgentTask({ ...task, status: { phase: "Done" } })).toThrow(
      expect.objectContaining({ field: "status.phase", rule: "enum" }),
    );
  });
});

describe("formatFieldPath", () => {
  it("writes indices in brackets and odd keys quoted", () => {
    expect(formatFieldPath("spec", ["scope", 2])).toBe("spec.scope[2]");
    expect(formatFieldPath("spec", ["agent", "labels", "a/b"])).toBe('spec.agent.labels["a/b"]');
  });
});
