// The Event recorder over a fake REST client: Events beyond the token bucket
// wait and are written later (a cascade leaves an Event on each task); only
// past the queue's bound are they shed.
import { afterEach, describe, expect, it } from "vitest";
import { TaskEventRecorder } from "../../operator/kube-events.ts";
import type { KubeRest } from "../../shells/kube/rest.ts";
import { createLogger } from "../../shells/log.ts";

const log = createLogger({ name: "test", level: "error", write: () => undefined });
const recorders: TaskEventRecorder[] = [];
afterEach(() => {
  for (const r of recorders.splice(0)) r.close();
});

function fakeRest() {
  const posted: Array<{ path: string; body: { regarding: { name: string }; reason: string } }> = [];
  const rest = {
    post: async (path: string, body: never) => {
      posted.push({ path, body });
      await new Promise((r) => setTimeout(r, 1));
      return body;
    },
  } as unknown as KubeRest;
  return { rest, posted };
}

const until = async (pred: () => boolean, ms = 2000) => {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 5));
  }
};

describe("TaskEventRecorder", () => {
  it("writes the Events beyond its burst later, in order, at its rate", async () => {
    const { rest, posted } = fakeRest();
    const recorder = new TaskEventRecorder(rest, log, "op-1", {
      burst: 5,
      ratePerSecond: 100,
      maxInflight: 2,
    });
    recorders.push(recorder);
    const started = Date.now();
    for (let i = 0; i < 25; i++)
      recorder.emit(
        { namespace: "team-a", name: `t${i}` },
        "Warning",
        "AncestorRevoked",
        "Revoke",
        "root revoked",
      );
    expect(recorder.queued).toBeGreaterThan(0);
    await until(() => posted.length === 25);
    // 5 from the burst, 20 more at 100/s: not before ~200 ms.
    expect(Date.now() - started).toBeGreaterThanOrEqual(150);
    expect(posted.map((p) => p.body.regarding.name)).toEqual(Array.from({ length: 25 }, (_, i) => `t${i}`));
    expect(posted[0]!.path).toBe("/apis/events.k8s.io/v1/namespaces/team-a/events");
    expect(recorder.dropped).toBe(0);
    expect(recorder.queued).toBe(0);
  });

  it("holds Events back while busy, and no longer than maxHoldMs", async () => {
    const { rest, posted } = fakeRest();
    let busy = true;
    const recorder = new TaskEventRecorder(rest, log, "op-1", { busy: () => busy, maxHoldMs: 300 });
    recorders.push(recorder);
    recorder.emit({ namespace: "ns", name: "a" }, "Warning", "AncestorRevoked", "Revoke", "root revoked");
    await new Promise((r) => setTimeout(r, 100));
    expect(posted).toHaveLength(0);
    busy = false;
    await until(() => posted.length === 1);
    // Still busy: written anyway once held for maxHoldMs.
    busy = true;
    const started = Date.now();
    recorder.emit({ namespace: "ns", name: "b" }, "Warning", "AncestorRevoked", "Revoke", "root revoked");
    await until(() => posted.length === 2);
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
  });

  it("writes nothing more once closed", async () => {
    const { rest, posted } = fakeRest();
    const recorder = new TaskEventRecorder(rest, log, "op-1", {
      burst: 1,
      ratePerSecond: 1000,
      maxInflight: 1,
    });
    for (let i = 0; i < 3; i++)
      recorder.emit({ namespace: "ns", name: `t${i}` }, "Normal", "Issued", "Issue", "ok");
    recorder.close();
    await new Promise((r) => setTimeout(r, 50));
    expect(posted.map((p) => p.body.regarding.name)).toEqual(["t0"]);
  });

  it("sheds and counts Events past its queue bound", async () => {
    const { rest, posted } = fakeRest();
    const recorder = new TaskEventRecorder(rest, log, "op-1", {
      burst: 1,
      ratePerSecond: 1000,
      maxInflight: 1,
      maxQueued: 3,
    });
    recorders.push(recorder);
    for (let i = 0; i < 6; i++)
      recorder.emit({ namespace: "ns", name: `t${i}` }, "Normal", "Issued", "Issue", "ok");
    // One went out at once; three wait; two are shed.
    expect(recorder.dropped).toBe(2);
    await until(() => posted.length === 4);
    expect(posted.map((p) => p.body.regarding.name)).toEqual(["t0", "t1", "t2", "t3"]);
  });
});
