// Which announced serials were never delivered: the pure half of the new
// leader's settling of its predecessors' tails.
import { describe, expect, it } from "vitest";
import { findAbandoned } from "../../core/provenance/abandoned.ts";

const ctx = (taskUid: string) => ({
  taskUid,
  namespace: "ns",
  name: `t-${taskUid}`,
  chainUids: [taskUid],
  rootUid: taskUid,
  contextDigest: "0".repeat(64),
});
const issued = (uid: string, serial: string) => ({
  type: "dev.custody.task.issued",
  data: { context: ctx(uid), certificate: { serial } },
});
const renewed = (uid: string, serial: string, previousSerial: string) => ({
  type: "dev.custody.task.renewed",
  data: { context: ctx(uid), certificate: { serial }, previousSerial },
});
const none = () => new Set<string>();

describe("findAbandoned", () => {
  it("an issued serial the task does not hold was never delivered", () => {
    expect(findAbandoned([issued("a", "01")], none).map((x) => [x.context.taskUid, x.serial])).toEqual([
      ["a", "01"],
    ]);
    expect(findAbandoned([issued("a", "01")], () => new Set(["01"]))).toEqual([]);
  });

  it("a serial renewed away, revoked, expired or already abandoned was settled", () => {
    const events = [
      issued("a", "01"),
      renewed("a", "02", "01"),
      issued("b", "10"),
      { type: "dev.custody.task.revoked", data: { context: ctx("b"), serials: ["10"] } },
      issued("c", "20"),
      { type: "dev.custody.task.expired", data: { context: ctx("c"), serial: "20" } },
      issued("d", "30"),
      { type: "dev.custody.task.issuance.abandoned", data: { context: ctx("d"), serial: "30" } },
    ];
    expect(findAbandoned(events, ({ taskUid }) => new Set(taskUid === "a" ? ["02"] : []))).toEqual([]);
  });

  it("a crash after a renewal's ack: the new serial is abandoned, the old one is still held", () => {
    const out = findAbandoned([issued("a", "01"), renewed("a", "02", "01")], () => new Set(["01"]));
    expect(out.map((x) => x.serial)).toEqual(["02"]);
  });

  it("only a task's last announcement can be open: earlier ones were delivered or settled on the spot", () => {
    expect(findAbandoned([issued("gone", "40"), issued("gone", "41")], none).map((x) => x.serial)).toEqual([
      "41",
    ]);
  });
});
