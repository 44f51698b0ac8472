// The SubjectAccessReview memo over a fake REST client: one review in flight
// per question, answers kept for their TTL, failures not kept.
import { describe, expect, it } from "vitest";
import { createCachedAccessReview } from "../../shells/kube/authorization.ts";
import type { KubeRest } from "../../shells/kube/rest.ts";

function fakeRest(answer: (body: { spec: { user: string } }) => boolean | Error) {
  const posted: string[] = [];
  const rest = {
    post: async (_path: string, body: { spec: { user: string } }) => {
      posted.push(body.spec.user);
      await new Promise((r) => setTimeout(r, 20));
      const a = answer(body);
      if (a instanceof Error) throw a;
      return { status: { allowed: a } };
    },
  } as unknown as KubeRest;
  return { rest, posted };
}

const use = { verb: "use", group: "custody.dev", resource: "agenttasks", namespace: "team-a", name: "t" };

describe("createCachedAccessReview", () => {
  it("sends one review for a burst of the same question, and keeps the answer for its TTL", async () => {
    const { rest, posted } = fakeRest((b) => b.spec.user === "alice");
    const review = createCachedAccessReview(rest, 100);
    const alice = { username: "alice", groups: ["dev"] };
    const answers = await Promise.all(Array.from({ length: 50 }, () => review(alice, use)));
    expect(answers.every((a) => a === true)).toBe(true);
    expect(posted).toEqual(["alice"]);
    // Another question is another review.
    expect(await review({ username: "bob" }, use)).toBe(false);
    expect(posted).toEqual(["alice", "bob"]);
    // Within the TTL: no review; after it: asked again.
    expect(await review(alice, use)).toBe(true);
    expect(posted).toHaveLength(2);
    await new Promise((r) => setTimeout(r, 120));
    expect(await review(alice, use)).toBe(true);
    expect(posted).toEqual(["alice", "bob", "alice"]);
  });

  it("does not keep a failure: every waiter sees it, the next call asks again", async () => {
    let fail = true;
    const { rest, posted } = fakeRest(() => (fail ? new Error("503 the server is busy") : true));
    const review = createCachedAccessReview(rest, 1_000);
    const user = { username: "alice" };
    const results = await Promise.allSettled([review(user, use), review(user, use)]);
    expect(results.map((r) => r.status)).toEqual(["rejected", "rejected"]);
    expect(posted).toHaveLength(1);
    fail = false;
    expect(await review(user, use)).toBe(true);
    expect(posted).toHaveLength(2);
  });
});
