import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ProvenanceUnavailableError } from "../../operator/provenance.ts";
import { failureReason } from "../../operator/task-reconciler.ts";
import { KubeApiError } from "../../shells/kube/rest.ts";
import { DENIAL_REASONS, FAILURE_REASONS, OperatorMetrics } from "../../shells/metrics.ts";

/** Sample lines of the text exposition: "name{labels}" → value. */
function samples(body: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of body.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const at = line.lastIndexOf(" ");
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

async function scrape(m: OperatorMetrics): Promise<Map<string, number>> {
  return samples((await m.render()).body);
}

const seriesOf = (s: Map<string, number>, name: string) =>
  [...s.keys()].filter((k) => k.startsWith(`${name}{`));

describe("OperatorMetrics", () => {
  it("renders the Prometheus text format with every operator metric, zero-initialised", async () => {
    const m = new OperatorMetrics({ defaultMetrics: false });
    const { contentType, body } = await m.render();
    expect(contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    for (const [name, type] of [
      ["custody_task_create_to_issued_seconds", "histogram"],
      ["custody_workqueue_depth", "gauge"],
      ["custody_issuances_total", "counter"],
      ["custody_revocations_total", "counter"],
      ["custody_expirations_total", "counter"],
      ["custody_denials_total", "counter"],
      ["custody_failures_total", "counter"],
      ["custody_leader", "gauge"],
      ["custody_provenance_backlog", "gauge"],
    ]) {
      expect(body).toContain(`# TYPE ${name} ${type}\n`);
      expect(body).toMatch(new RegExp(`# HELP ${name} \\S`));
    }
    const s = await scrape(m);
    expect(s.get('custody_issuances_total{kind="issued"}')).toBe(0);
    expect(s.get('custody_issuances_total{kind="renewed"}')).toBe(0);
    expect(s.get('custody_revocations_total{cascade="true"}')).toBe(0);
    expect(s.get('custody_revocations_total{cascade="false"}')).toBe(0);
    expect(s.get('custody_denials_total{reason="ScopeEscalation"}')).toBe(0);
    expect(s.get("custody_leader")).toBe(0);
    expect(body).not.toContain("process_resident_memory_bytes");
  });

  it("includes the default process metrics (RSS etc.) by default", async () => {
    const { body } = await new OperatorMetrics().render();
    expect(body).toContain("# TYPE process_resident_memory_bytes gauge");
    expect(body).toContain("nodejs_eventloop_lag_seconds");
  });

  it("counts issuances and observes create-to-issued latency in seconds for first issuances only", async () => {
    const m = new OperatorMetrics({ defaultMetrics: false });
    m.issued("issued", 40); // 0.04 s
    m.issued("issued", 3_000); // 3 s
    m.issued("issued"); // latency unknown: counted, not observed
    m.issued("renewed", 999_999); // renewals are not create-to-issued
    m.issued("issued", -200); // creationTimestamp is whole seconds from another clock
    m.issued("issued", Number.NaN);
    const s = await scrape(m);
    expect(s.get('custody_issuances_total{kind="issued"}')).toBe(5);
    expect(s.get('custody_issuances_total{kind="renewed"}')).toBe(1);
    expect(s.get("custody_task_create_to_issued_seconds_count")).toBe(3);
    expect(s.get("custody_task_create_to_issued_seconds_sum")).toBeCloseTo(3.04, 9);
    expect(s.get('custody_task_create_to_issued_seconds_bucket{le="0.005"}')).toBe(1);
    expect(s.get('custody_task_create_to_issued_seconds_bucket{le="0.05"}')).toBe(2);
    expect(s.get('custody_task_create_to_issued_seconds_bucket{le="2.5"}')).toBe(2);
    expect(s.get('custody_task_create_to_issued_seconds_bucket{le="5"}')).toBe(3);
    expect(s.get('custody_task_create_to_issued_seconds_bucket{le="30"}')).toBe(3);
    expect(s.get('custody_task_create_to_issued_seconds_bucket{le="+Inf"}')).toBe(3);
  });

  it("routes transitions to denials, failures, revocations (direct vs cascaded) and expirations", async () => {
    const m = new OperatorMetrics({ defaultMetrics: false });
    m.transition("denied", "ScopeEscalation");
    m.transition("denied", "ScopeEscalation");
    m.transition("denied", "TtlExceedsParent");
    m.transition("failed", "CAUnavailable");
    m.transition("revoked", "Revoked");
    m.transition("revoked", "AncestorRevoked");
    m.transition("revoked", "ParentExpired");
    m.transition("expired", "DeadlinePassed");
    m.failure("Timeout");
    const s = await scrape(m);
    expect(s.get('custody_denials_total{reason="ScopeEscalation"}')).toBe(2);
    expect(s.get('custody_denials_total{reason="TtlExceedsParent"}')).toBe(1);
    expect(s.get('custody_failures_total{reason="CAUnavailable"}')).toBe(1);
    expect(s.get('custody_failures_total{reason="Timeout"}')).toBe(1);
    expect(s.get('custody_revocations_total{cascade="false"}')).toBe(1);
    expect(s.get('custody_revocations_total{cascade="true"}')).toBe(2);
    expect(s.get("custody_expirations_total")).toBe(1);
  });

  it("counts every reason the reconciler emits under its own name, none as Other", async () => {
    const m = new OperatorMetrics({ defaultMetrics: false });
    for (const r of ["PolicyDenied", "AudienceEscalation", "RequesterUnproven", "InvalidSpec"])
      m.transition("denied", r);
    m.transition("failed", "MintFailed");
    for (const err of [
      new ProvenanceUnavailableError("no stream"),
      new KubeApiError(409, "Conflict", "PUT: 409", {}),
      new KubeApiError(500, "InternalError", "PUT: 500", {}),
      new Error("request timed out after 30000 ms"),
      new Error("boom"),
    ])
      m.failure(failureReason(err));
    const s = await scrape(m);
    expect(s.get('custody_denials_total{reason="Other"}')).toBe(0);
    expect(s.get('custody_denials_total{reason="PolicyDenied"}')).toBe(1);
    expect(s.get('custody_denials_total{reason="AudienceEscalation"}')).toBe(1);
    expect(s.get('custody_failures_total{reason="MintFailed"}')).toBe(1);
    expect(s.get('custody_failures_total{reason="ProvenanceUnavailable"}')).toBe(1);
    expect(s.get('custody_failures_total{reason="Conflict"}')).toBe(1);
    expect(s.get('custody_failures_total{reason="ApiError"}')).toBe(1);
    expect(s.get('custody_failures_total{reason="Timeout"}')).toBe(1);
    expect(s.get('custody_failures_total{reason="Other"}')).toBe(1);
  });

  it("maps any reason outside the closed sets to Other, so label cardinality stays bounded", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.string(), { maxLength: 30 }), async (reasons) => {
        const m = new OperatorMetrics({ defaultMetrics: false });
        for (const r of reasons) {
          m.transition("denied", r);
          m.transition("failed", r);
        }
        const s = await scrape(m);
        const denials = seriesOf(s, "custody_denials_total");
        const failures = seriesOf(s, "custody_failures_total");
        expect(denials).toHaveLength(DENIAL_REASONS.length);
        expect(failures).toHaveLength(FAILURE_REASONS.length);
        const unknown = reasons.filter((r) => !(DENIAL_REASONS as readonly string[]).includes(r)).length;
        expect(s.get('custody_denials_total{reason="Other"}')).toBe(unknown);
        const total = denials.reduce((sum, k) => sum + (s.get(k) ?? 0), 0);
        expect(total).toBe(reasons.length);
      }),
      { numRuns: 50 },
    );
  });

  it("reports leadership, queue depth (per queue, also via the WorkQueue hook) and provenance backlog", async () => {
    const m = new OperatorMetrics({ defaultMetrics: false });
    m.leader(true);
    m.queueDepth(17);
    m.workQueue("cascade").depth?.(3);
    m.provenanceBacklog(250);
    let s = await scrape(m);
    expect(s.get("custody_leader")).toBe(1);
    expect(s.get('custody_workqueue_depth{queue="agenttasks"}')).toBe(17);
    expect(s.get('custody_workqueue_depth{queue="cascade"}')).toBe(3);
    expect(s.get("custody_provenance_backlog")).toBe(250);
    m.leader(false);
    m.queueDepth(0);
    s = await scrape(m);
    expect(s.get("custody_leader")).toBe(0);
    expect(s.get('custody_workqueue_depth{queue="agenttasks"}')).toBe(0);
  });

  it("keeps instances independent (no shared global registry)", async () => {
    const a = new OperatorMetrics({ defaultMetrics: false });
    const b = new OperatorMetrics({ defaultMetrics: false });
    a.issued("renewed");
    expect((await scrape(a)).get('custody_issuances_total{kind="renewed"}')).toBe(1);
    expect((await scrape(b)).get('custody_issuances_total{kind="renewed"}')).toBe(0);
  });
});
