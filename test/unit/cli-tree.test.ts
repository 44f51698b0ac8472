// The delegation tree `custody tree` prints: roots with sub-agents nested by
// spec.parentRef, orphans shown as roots naming their missing parent, one
// task's ancestors up to the principal, reasons only for Denied and Revoked.
import { describe, expect, it } from "vitest";
import { buildNamespaceTrees, buildTaskTree, renderNamespaceTrees, renderTaskTree } from "../../cli/tree.ts";
import type { AgentTask } from "../../core/api/v1alpha1.ts";

function task(
  name: string,
  opts: {
    ns?: string;
    parent?: string;
    phase?: AgentTask["status"] extends infer S ? (S extends { phase?: infer P } ? P : never) : never;
    delegator?: string;
    scope?: string[];
    reason?: string;
    chain?: Array<{ kind: string; name: string }>;
  } = {},
): AgentTask {
  return {
    apiVersion: "custody.dev/v1alpha1",
    kind: "AgentTask",
    metadata: { name, namespace: opts.ns ?? "agents" },
    spec: {
      agent: { name: "a" },
      scope: opts.scope ?? [`read:${name}`],
      serviceAccountName: "sa",
      ...(opts.parent ? { parentRef: { name: opts.parent } } : {}),
    },
    status: {
      ...(opts.phase ? { phase: opts.phase } : {}),
      ...(opts.delegator ? { delegator: { kind: "User", name: opts.delegator } } : {}),
      ...(opts.reason
        ? {
            conditions: [
              {
                type: "Ready",
                status: "False",
                reason: opts.reason,
                message: `because ${opts.reason}`,
                lastTransitionTime: "2026-01-01T00:00:00Z",
              },
            ],
          }
        : {}),
      ...(opts.chain ? { delegationChain: opts.chain.map((c) => ({ ...c, uid: "", scope: [] })) } : {}),
    },
  } as unknown as AgentTask;
}

const demo = [
  task("review-pr-4821-pusher", {
    parent: "review-pr-4821",
    phase: "Denied",
    delegator: "alice",
    reason: "ScopeEscalation",
    scope: ["write:repos/acme/api"],
  }),
  task("review-pr-4821", {
    phase: "Issued",
    delegator: "alice",
    scope: ["read:repos/acme/*", "comment:repos/acme/api/pulls/4821"],
  }),
  task("review-pr-4821-linter", { parent: "review-pr-4821", phase: "Issued", delegator: "alice" }),
  task("grandchild", { parent: "review-pr-4821-linter", phase: "Revoked", reason: "ParentRevoked" }),
  task("nightly", { phase: "Expired", delegator: "bob", reason: "Expired" }),
];

describe("buildNamespaceTrees", () => {
  it("nests sub-agents under their root by parentRef, sorted by name, delegator on roots only", () => {
    const [agents] = buildNamespaceTrees(demo);
    expect(agents!.namespace).toBe("agents");
    expect(agents!.roots.map((r) => r.name)).toEqual(["nightly", "review-pr-4821"]);
    const root = agents!.roots[1]!;
    expect(root.delegator).toEqual({ kind: "User", name: "alice" });
    expect(root.children.map((c) => c.name)).toEqual(["review-pr-4821-linter", "review-pr-4821-pusher"]);
    const [linter, pusher] = root.children;
    expect(linter!.delegator).toBeUndefined();
    expect(linter!.children.map((c) => c.name)).toEqual(["grandchild"]);
    expect(pusher).toMatchObject({
      phase: "Denied",
      reason: "ScopeEscalation",
      scope: ["write:repos/acme/api"],
    });
    expect(linter!.children[0]).toMatchObject({ phase: "Revoked", reason: "ParentRevoked" });
    // Expired is not Denied or Revoked: no reason shown.
    expect(agents!.roots[0]!.reason).toBeUndefined();
  });

  it("shows a task whose parent is gone as a root naming the missing parent; groups namespaces", () => {
    const trees = buildNamespaceTrees([
      task("orphan", { parent: "deleted", phase: "Issued" }),
      task("other", { ns: "b-ns", phase: "Pending" }),
      task("other", { ns: "a-ns", phase: "Issued", delegator: "carol" }),
    ]);
    expect(trees.map((t) => t.namespace)).toEqual(["a-ns", "agents", "b-ns"]);
    expect(trees[1]!.roots[0]).toMatchObject({ name: "orphan", missingParent: "deleted", children: [] });
    // Same name in two namespaces: not each other's parent or child.
    expect(trees[0]!.roots[0]!.children).toEqual([]);
  });

  it("does not loop on a parentRef cycle", () => {
    const trees = buildNamespaceTrees([task("a", { parent: "b" }), task("b", { parent: "a" })]);
    const names = (n: { name: string; children: unknown[] }): string[] => [
      n.name,
      ...(n.children as Array<{ name: string; children: unknown[] }>).flatMap(names),
    ];
    expect(trees[0]!.roots.flatMap(names).sort()).toEqual(["a", "b"]);
  });

  it("renders an indented tree, one line per task", () => {
    expect(renderNamespaceTrees(buildNamespaceTrees(demo), false)).toBe(
      [
        "nightly  Expired  delegated by User/bob  scope: read:nightly",
        "review-pr-4821  Issued  delegated by User/alice  scope: read:repos/acme/*, comment:repos/acme/api/pulls/4821",
        "├── review-pr-4821-linter  Issued  scope: read:review-pr-4821-linter",
        "│   └── grandchild  Revoked  scope: read:grandchild  reason: ParentRevoked",
        "└── review-pr-4821-pusher  Denied  scope: write:repos/acme/api  reason: ScopeEscalation",
        "",
      ].join("\n"),
    );
  });
});

describe("buildTaskTree", () => {
  it("gives the task's ancestors up to the principal, then its subtree", () => {
    const t = buildTaskTree(demo, "agents", "review-pr-4821-linter")!;
    expect(t.principal).toEqual({ kind: "User", name: "alice" });
    expect(t.ancestors.map((a) => a.name)).toEqual(["review-pr-4821"]);
    expect(t.task.name).toBe("review-pr-4821-linter");
    expect(t.task.children.map((c) => c.name)).toEqual(["grandchild"]);
    // The ancestors carry no other children (the pusher is not on this path).
    expect(JSON.stringify(t)).not.toContain("pusher");
    expect(renderTaskTree(t)).toBe(
      [
        "User/alice",
        "└── review-pr-4821  Issued  delegated by User/alice  scope: read:repos/acme/*, comment:repos/acme/api/pulls/4821",
        "    └── review-pr-4821-linter  Issued  scope: read:review-pr-4821-linter   <= this task",
        "        └── grandchild  Revoked  scope: read:grandchild  reason: ParentRevoked",
        "",
      ].join("\n"),
    );
  });

  it("a root is its own top; an orphan takes its principal from its recorded chain", () => {
    const root = buildTaskTree(demo, "agents", "review-pr-4821")!;
    expect(root.ancestors).toEqual([]);
    expect(root.task.children).toHaveLength(2);
    const orphan = buildTaskTree(
      [
        task("orphan", {
          parent: "gone",
          chain: [
            { kind: "User", name: "dave" },
            { kind: "AgentTask", name: "gone" },
          ],
        }),
      ],
      "agents",
      "orphan",
    )!;
    expect(orphan.principal).toEqual({ kind: "User", name: "dave" });
    expect(orphan.task.missingParent).toBe("gone");
    expect(buildTaskTree(demo, "agents", "nope")).toBeUndefined();
    expect(buildTaskTree(demo, "other", "review-pr-4821")).toBeUndefined();
  });
});
