import { describe, expect, it } from "vitest";
import { TrustBundlePublisher } from "../../operator/trust-bundle.ts";
import type { KubeRest } from "../../shells/kube/rest.ts";
import { silentLogger } from "../../shells/log.ts";

/** A KubeRest whose ConfigMap writes finish only when the test says so; it keeps what each write carried. */
function slowApiServer() {
  const written: string[] = [];
  const pending: Array<() => void> = [];
  const rest = {
    post: (_path: string, body: { data: Record<string, string> }) =>
      new Promise<void>((resolve) => {
        pending.push(() => {
          written.push(body.data["revoked.txt"] ?? "");
          resolve();
        });
      }),
  } as unknown as KubeRest;
  return {
    rest,
    written,
    /** Completes the oldest write in flight. */
    finishOne: async () => {
      pending.shift()?.();
      await new Promise((r) => setImmediate(r));
    },
  };
}

/** A publisher writing through {@link slowApiServer}. */
function slowPublisher() {
  const api = slowApiServer();
  return {
    api,
    bundles: new TrustBundlePublisher(api.rest, silentLogger, { "ca.crt": "ca", "bundle.spiffe": "{}" }),
  };
}

describe("TrustBundlePublisher.ensure", () => {
  it("resolves a caller once a write that started after its call succeeded, however the content keeps changing", async () => {
    const { api, bundles } = slowPublisher();
    bundles.setRevoked("ns", ["s1"]);
    const a = bundles.ensure("ns"); // write A (s1) in flight
    bundles.setRevoked("ns", ["s1", "s2"]);
    const x = bundles.ensure("ns");
    bundles.setRevoked("ns", ["s1", "s2", "s3"]);
    let wDone = false;
    const w = bundles.ensure("ns").then(() => {
      wDone = true;
    });
    await api.finishOne(); // A done; write B starts with s1..s3, which W asked for
    await a;
    // Content changes again while B is in flight: that must not keep W waiting past B.
    bundles.setRevoked("ns", ["s1", "s2", "s3", "s4"]);
    const later = bundles.ensure("ns");
    await api.finishOne(); // B done
    await x;
    await new Promise((r) => setImmediate(r));
    expect(api.written).toEqual(["s1\n", "s1\ns2\ns3\n"]);
    expect(wDone).toBe(true);
    await w;
    await api.finishOne(); // C (s1..s4), for the caller who asked after B began
    await later;
    expect(api.written.at(-1)).toBe("s1\ns2\ns3\ns4\n");
    expect(bundles.isCurrent("ns")).toBe(true);
  });

  it("shares one queued write among everyone who asked while a write was in flight", async () => {
    const { api, bundles } = slowPublisher();
    bundles.setRevoked("ns", ["s1"]);
    const first = bundles.ensure("ns");
    const waiting = [1, 2, 3].map((i) => {
      bundles.setRevoked("ns", ["s1", ...["s2", "s3", "s4"].slice(0, i)]);
      return bundles.ensure("ns");
    });
    await api.finishOne();
    await first;
    await api.finishOne();
    await Promise.all(waiting);
    expect(api.written).toEqual(["s1\n", "s1\ns2\ns3\ns4\n"]);
  });
});
