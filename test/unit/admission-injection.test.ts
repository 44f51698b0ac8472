// Identity injection (core/admission/injection.ts): the patch adds one volume,
// one mount per selected container and the CUSTODY_* variables; applied and
// computed again it is empty; anything already present under our names with
// other content is refused; nothing outside our names changes.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  INJECT_CONTAINERS_ANNOTATION,
  INJECTED_ENV_NAMES,
  injectedEnv,
  injectionPatch,
  injectionWarnings,
  parseInjectContainers,
  SVID_MOUNT_PATH,
  SVID_VOLUME_NAME,
  sameValue,
  svidVolume,
  svidVolumeMount,
} from "../../core/admission/injection.ts";
import { ValidationError } from "../../core/errors.ts";
import { credentialSecretName, TRUST_BUNDLE_CONFIGMAP } from "../../operator/resources.ts";
import { applyPatch } from "./json-patch.ts";

const target = { task: "t1", spiffeId: "spiffe://custody.local/ns/team/agent/coder/task/t1" };

type SecretSource = { name: string; items: Array<{ key: string; path: string }>; optional?: boolean };

type Pod = {
  metadata?: Record<string, unknown>;
  spec: Record<string, unknown> & { containers?: Array<Record<string, unknown>> };
};

const pod = (spec: Record<string, unknown>, annotations?: Record<string, string>): Pod => ({
  metadata: {
    name: "p",
    labels: { "custody.dev/agent-task": "t1" },
    ...(annotations ? { annotations } : {}),
  },
  spec,
});

function errorOf(fn: () => unknown): ValidationError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ValidationError) return e;
    throw e;
  }
  throw new Error("expected a ValidationError");
}

const inject = (p: Pod, t = target) => applyPatch(p, injectionPatch(p, t));

describe("injectionPatch", () => {
  it("adds the volume, a read-only mount and the variables to a pod without any of them", () => {
    const p = pod({ containers: [{ name: "main", image: "agent:1" }] });
    const patch = injectionPatch(p, target);
    // Absent arrays are added whole: no `-` into a list that is not there.
    expect(patch).toEqual([
      { op: "add", path: "/spec/volumes", value: [svidVolume("t1")] },
      { op: "add", path: "/spec/containers/0/volumeMounts", value: [svidVolumeMount()] },
      { op: "add", path: "/spec/containers/0/env", value: injectedEnv(target.spiffeId) },
    ]);
    const out = applyPatch(p, patch);
    const c = out.spec.containers![0]!;
    expect(c.volumeMounts).toEqual([{ name: "custody-svid", mountPath: SVID_MOUNT_PATH, readOnly: true }]);
    expect(
      Object.fromEntries((c.env as Array<{ name: string; value: string }>).map((e) => [e.name, e.value])),
    ).toEqual({
      CUSTODY_SPIFFE_ID: target.spiffeId,
      CUSTODY_SVID_CERT: `${SVID_MOUNT_PATH}/tls.crt`,
      CUSTODY_SVID_KEY: `${SVID_MOUNT_PATH}/tls.key`,
      CUSTODY_SVID_BUNDLE: `${SVID_MOUNT_PATH}/ca.crt`,
      CUSTODY_TRUST_BUNDLE_SPIFFE: `${SVID_MOUNT_PATH}/bundle.spiffe`,
    });
  });

  it("projects the task's credential Secret and the namespace's trust bundle, read-only", () => {
    const volume = svidVolume("t1") as {
      projected: { defaultMode: number; sources: Array<{ secret?: SecretSource; configMap?: SecretSource }> };
    };
    expect(volume.projected.defaultMode).toBe(0o440);
    const [secret, bundle, revoked] = volume.projected.sources;
    expect(secret!.secret!.name).toBe(credentialSecretName("t1"));
    expect(secret!.secret!.items.map((i: { key: string }) => i.key)).toEqual([
      "tls.crt",
      "tls.key",
      "ca.crt",
    ]);
    expect(secret!.secret!.optional).toBeUndefined();
    expect(bundle!.configMap).toEqual({
      name: TRUST_BUNDLE_CONFIGMAP,
      items: [{ key: "bundle.spiffe", path: "bundle.spiffe" }],
    });
    // revoked.txt is written only once something is revoked: its absence must not block the pod.
    expect(revoked!.configMap).toEqual({
      name: TRUST_BUNDLE_CONFIGMAP,
      items: [{ key: "revoked.txt", path: "revoked.txt" }],
      optional: true,
    });
  });

  it("projects a JWT-SVID file per audience, and the token-exchange one, for a task that names audiences", () => {
    const withAudiences = { ...target, audiences: ["https://api.example", "billing"] };
    const out = inject(pod({ containers: [{ name: "agent" }] }), withAudiences);
    const volume = (
      out.spec.volumes as Array<{ projected: { sources: Array<{ secret?: SecretSource }> } }>
    )[0]!;
    expect(volume.projected.sources[0]!.secret!.items).toEqual([
      { key: "tls.crt", path: "tls.crt" },
      { key: "tls.key", path: "tls.key" },
      { key: "ca.crt", path: "ca.crt" },
      { key: "jwt-svid.token-exchange", path: "jwt-svid.token-exchange" },
      { key: "jwt-svid.https___api.example", path: "jwt-svid.https___api.example" },
      { key: "jwt-svid.billing", path: "jwt-svid.billing" },
    ]);
    // A pod injected for the task without audiences carries other content: not silently accepted.
    expect(() => injectionPatch(out, target)).toThrow(ValidationError);
  });

  it("appends with `-` to lists that exist and keeps what is there", () => {
    const p = pod({
      volumes: [{ name: "data", emptyDir: {} }],
      containers: [
        {
          name: "main",
          volumeMounts: [{ name: "data", mountPath: "/data" }],
          env: [{ name: "A", value: "1" }],
        },
      ],
    });
    const patch = injectionPatch(p, target);
    expect(patch.map((o) => o.path)).toEqual([
      "/spec/volumes/-",
      "/spec/containers/0/volumeMounts/-",
      ...INJECTED_ENV_NAMES.map(() => "/spec/containers/0/env/-"),
    ]);
    const out = applyPatch(p, patch);
    expect(out.spec.volumes).toEqual([{ name: "data", emptyDir: {} }, svidVolume("t1")]);
    expect((out.spec.containers![0]!.env as unknown[])[0]).toEqual({ name: "A", value: "1" });
  });

  it("treats null lists as absent (add replaces the null member)", () => {
    const p = pod({ volumes: null, containers: [{ name: "main", volumeMounts: null, env: null }] });
    const out = inject(p);
    expect(out.spec.volumes).toHaveLength(1);
    expect(injectionPatch(out, target)).toEqual([]);
  });

  it("is idempotent: re-invocation on the patched pod adds nothing", () => {
    const p = pod({ containers: [{ name: "a" }, { name: "b", env: [{ name: "X", value: "y" }] }] });
    const once = inject(p);
    expect(injectionPatch(once, target)).toEqual([]);
  });

  it("adds only what is missing when another mutator kept part of it", () => {
    const p = inject(pod({ containers: [{ name: "a" }] }));
    // A later mutator drops one variable; the re-invocation restores exactly that one.
    const c = p.spec.containers![0]!;
    c.env = (c.env as Array<{ name: string }>).filter((e) => e.name !== "CUSTODY_SVID_KEY");
    expect(injectionPatch(p, target)).toEqual([
      {
        op: "add",
        path: "/spec/containers/0/env/-",
        value: { name: "CUSTODY_SVID_KEY", value: `${SVID_MOUNT_PATH}/tls.key` },
      },
    ]);
  });

  it("accepts our content after defaulting adds empty members (optional: false, null)", () => {
    const p = inject(pod({ containers: [{ name: "a" }] }));
    const v = (
      p.spec.volumes as Array<{ projected: { sources: Array<{ secret?: Record<string, unknown> }> } }>
    )[0]!;
    v.projected.sources[0]!.secret!.optional = false;
    (p.spec.containers![0]!.volumeMounts as Array<Record<string, unknown>>)[0]!.subPath = "";
    expect(injectionPatch(p, target)).toEqual([]);
  });

  it("injects only the containers named by the annotation, init containers included when named", () => {
    const p = pod(
      {
        initContainers: [{ name: "proxy", restartPolicy: "Always" }, { name: "setup" }],
        containers: [{ name: "agent" }, { name: "tool" }],
      },
      { [INJECT_CONTAINERS_ANNOTATION]: " agent , proxy,agent" },
    );
    const out = inject(p);
    expect(out.spec.containers![0]!.volumeMounts).toEqual([svidVolumeMount()]);
    expect(out.spec.containers![1]!.volumeMounts).toBeUndefined();
    expect(out.spec.containers![1]!.env).toBeUndefined();
    const init = out.spec.initContainers as Array<Record<string, unknown>>;
    expect(init[0]!.volumeMounts).toEqual([svidVolumeMount()]);
    expect(init[1]!.volumeMounts).toBeUndefined();
    expect(injectionPatch(out, target)).toEqual([]);
  });

  it("by default injects every regular container, not init containers", () => {
    const out = inject(
      pod({ initContainers: [{ name: "init" }], containers: [{ name: "a" }, { name: "b" }] }),
    );
    expect(out.spec.containers!.every((c) => Array.isArray(c.volumeMounts))).toBe(true);
    expect((out.spec.initContainers as Array<Record<string, unknown>>)[0]!.volumeMounts).toBeUndefined();
  });

  it("refuses an annotation naming a container the pod does not have, naming the annotation", () => {
    const e = errorOf(() =>
      injectionPatch(
        pod({ containers: [{ name: "agent" }] }, { [INJECT_CONTAINERS_ANNOTATION]: "agent,sidecar" }),
        target,
      ),
    );
    expect(e.field).toBe(`metadata.annotations[${INJECT_CONTAINERS_ANNOTATION}]`);
    expect(e.rule).toBe("unknown-container");
    expect(e.message).toContain('"sidecar"');
    expect(e.message).toContain("agent");
  });

  it("refuses an annotation that names nothing", () => {
    const e = errorOf(() =>
      injectionPatch(pod({ containers: [{ name: "a" }] }, { [INJECT_CONTAINERS_ANNOTATION]: " , " }), target),
    );
    expect(e.rule).toBe("unknown-container");
  });

  it.each([
    [
      "a volume named custody-svid with other content",
      pod({
        volumes: [{ name: SVID_VOLUME_NAME, secret: { secretName: "custody-svid-other" } }],
        containers: [{ name: "a" }],
      }),
      "spec.volumes[custody-svid]",
      "reserved-name",
    ],
    [
      "our volume for another task",
      pod({ volumes: [svidVolume("other")], containers: [{ name: "a" }] }),
      "spec.volumes[custody-svid]",
      "reserved-name",
    ],
    [
      "a writable mount of custody-svid",
      pod({
        containers: [{ name: "a", volumeMounts: [{ name: SVID_VOLUME_NAME, mountPath: SVID_MOUNT_PATH }] }],
      }),
      "spec.containers[a].volumeMounts[custody-svid]",
      "reserved-name",
    ],
    [
      "another volume at our mount path",
      pod({ containers: [{ name: "a", volumeMounts: [{ name: "x", mountPath: `${SVID_MOUNT_PATH}/` }] }] }),
      "spec.containers[a].volumeMounts[x]",
      "reserved-path",
    ],
    [
      "CUSTODY_SPIFFE_ID set by the author",
      pod({ containers: [{ name: "a", env: [{ name: "CUSTODY_SPIFFE_ID", value: "spiffe://evil/x" }] }] }),
      "spec.containers[a].env[CUSTODY_SPIFFE_ID]",
      "reserved-name",
    ],
    [
      "CUSTODY_SVID_KEY from a Secret",
      pod({
        containers: [
          {
            name: "a",
            env: [{ name: "CUSTODY_SVID_KEY", valueFrom: { secretKeyRef: { name: "s", key: "k" } } }],
          },
        ],
      }),
      "spec.containers[a].env[CUSTODY_SVID_KEY]",
      "reserved-name",
    ],
    [
      "custody-svid mounted into a container not selected",
      pod(
        { containers: [{ name: "a" }, { name: "b", volumeMounts: [svidVolumeMount()] }] },
        { [INJECT_CONTAINERS_ANNOTATION]: "a" },
      ),
      "spec.containers[b].volumeMounts[custody-svid]",
      "inject-containers",
    ],
  ])("refuses %s", (_what, p, field, rule) => {
    const e = errorOf(() => injectionPatch(p, target));
    expect(e.field).toBe(field);
    expect(e.rule).toBe(rule);
    expect(e.message).toContain(field);
    // A value the author put there is never echoed back.
    expect(e.message).not.toContain("spiffe://evil");
  });

  it("leaves unselected containers' own CUSTODY_* variables alone", () => {
    const p = pod(
      {
        containers: [{ name: "a" }, { name: "b", env: [{ name: "CUSTODY_SPIFFE_ID", value: "unrelated" }] }],
      },
      { [INJECT_CONTAINERS_ANNOTATION]: "a" },
    );
    const out = inject(p);
    expect(out.spec.containers![1]!.env).toEqual([{ name: "CUSTODY_SPIFFE_ID", value: "unrelated" }]);
  });

  it("refuses a pod without a spec or with a malformed list, naming the field", () => {
    expect(errorOf(() => injectionPatch({ metadata: {} }, target)).field).toBe("spec");
    expect(errorOf(() => injectionPatch(pod({ containers: {} }), target)).field).toBe("spec.containers");
    expect(errorOf(() => injectionPatch(pod({ containers: [{ name: "a", env: "x" }] }), target)).field).toBe(
      "spec.containers[a].env",
    );
  });

  it("works on a workload's pod template at a pointer, with field paths under it", () => {
    const deployment = { spec: { template: pod({ containers: [{ name: "a" }] }) } };
    const patch = injectionPatch(deployment.spec.template, target, {
      pointer: "/spec/template",
      field: "spec.template.",
    });
    const out = applyPatch(deployment, patch);
    expect(injectionPatch(out.spec.template, target)).toEqual([]);
    const e = errorOf(() =>
      injectionPatch(pod({ containers: [{ name: "a" }] }, { [INJECT_CONTAINERS_ANNOTATION]: "b" }), target, {
        pointer: "/spec/template",
        field: "spec.template.",
      }),
    );
    expect(e.field).toBe(`spec.template.metadata.annotations[${INJECT_CONTAINERS_ANNOTATION}]`);
  });
});

describe("injectionWarnings", () => {
  it("warns when a selected container runs as non-root and the pod sets no fsGroup", () => {
    expect(
      injectionWarnings(
        pod({ securityContext: { runAsNonRoot: true }, containers: [{ name: "a" }] }),
        target,
      )[0],
    ).toMatch(/fsGroup/);
    expect(
      injectionWarnings(pod({ containers: [{ name: "a", securityContext: { runAsUser: 1000 } }] }), target),
    ).toHaveLength(1);
  });
  it("is silent with fsGroup, for root, or when nothing is known", () => {
    expect(
      injectionWarnings(
        pod({ securityContext: { runAsUser: 1000, fsGroup: 2000 }, containers: [{ name: "a" }] }),
        target,
      ),
    ).toEqual([]);
    expect(
      injectionWarnings(pod({ containers: [{ name: "a", securityContext: { runAsUser: 0 } }] }), target),
    ).toEqual([]);
    expect(injectionWarnings(pod({ containers: [{ name: "a" }] }), target)).toEqual([]);
  });
});

describe("helpers", () => {
  it("parseInjectContainers trims, drops empties and duplicates", () => {
    expect(parseInjectContainers(" a,b ,, a")).toEqual(["a", "b"]);
  });
  it("sameValue treats absent, null, false and empty members alike, nothing else", () => {
    expect(sameValue({ a: 1, b: null }, { a: 1 })).toBe(true);
    expect(sameValue({ a: 1, optional: false }, { a: 1 })).toBe(true);
    expect(sameValue({ a: 1, readOnly: true }, { a: 1 })).toBe(false);
    expect(sameValue([1, 2], [2, 1])).toBe(false);
    expect(sameValue({ a: 0 }, { a: undefined })).toBe(false);
  });
});

// ------------------------------------------------------------------ property

const OURS_ENV = new Set<string>(INJECTED_ENV_NAMES);
const name = fc.stringMatching(/^[a-z][a-z0-9-]{0,8}$/);
const envVar = fc.oneof(
  fc.record({ name: name.map((n) => `E_${n}`), value: fc.string({ maxLength: 8 }) }),
  // Sometimes one of ours, already exactly right (as after an earlier invocation).
  fc.constantFrom(...injectedEnv(target.spiffeId)),
);
const mount = fc.record({ name: name.map((n) => `v-${n}`), mountPath: name.map((n) => `/m/${n}`) });
const list = <T>(arb: fc.Arbitrary<T>) =>
  fc.oneof(fc.constant(undefined), fc.constant(null), fc.array(arb, { maxLength: 4 }));
const container = (n: string) =>
  fc.record(
    {
      name: fc.constant(n),
      image: fc.constant("agent:1"),
      env: list(envVar).map((l) => (Array.isArray(l) ? dedupeBy(l, (e) => e.name) : l)),
      volumeMounts: list(mount).map((l) => (Array.isArray(l) ? dedupeBy(l, (m) => m.mountPath) : l)),
    },
    { requiredKeys: ["name"] },
  );
const podArb = fc
  .uniqueArray(name, { maxLength: 4 })
  .chain((names) =>
    fc.record({
      containers: fc.tuple(...names.map(container)),
      volumes: list(fc.record({ name: name.map((n) => `v-${n}`), emptyDir: fc.constant({}) })),
      withOurVolume: fc.boolean(),
      selectSome: fc.boolean(),
    }),
  )
  .map(({ containers, volumes, withOurVolume, selectSome }) => {
    const vols = Array.isArray(volumes) ? dedupeBy(volumes, (v) => v.name) : volumes;
    const spec: Record<string, unknown> = { containers };
    if (vols !== undefined)
      spec.volumes = withOurVolume && Array.isArray(vols) ? [...vols, svidVolume("t1")] : vols;
    const annotations =
      selectSome && containers.length > 0
        ? { [INJECT_CONTAINERS_ANNOTATION]: containers[0]!.name }
        : undefined;
    return pod(spec, annotations);
  });

function dedupeBy<T>(items: T[], key: (t: T) => string): T[] {
  const seen = new Set<string>();
  return items.filter((i) => {
    if (seen.has(key(i))) return false;
    seen.add(key(i));
    return true;
  });
}

/** The pod with everything under our names removed, and empty or null lists dropped. */
function withoutOurs(p: Pod): unknown {
  const copy = structuredClone(p);
  const dropEmpty = (o: Record<string, unknown>, k: string, keep: (x: { name: string }) => boolean) => {
    const v = o[k];
    if (!Array.isArray(v)) {
      if (v === null) delete o[k];
      return;
    }
    const kept = (v as Array<{ name: string }>).filter(keep);
    if (kept.length === 0) delete o[k];
    else o[k] = kept;
  };
  dropEmpty(copy.spec, "volumes", (v) => v.name !== SVID_VOLUME_NAME);
  for (const c of copy.spec.containers ?? []) {
    dropEmpty(c, "volumeMounts", (m) => m.name !== SVID_VOLUME_NAME);
    dropEmpty(c, "env", (e) => !OURS_ENV.has(e.name));
  }
  return copy;
}

describe("injectionPatch (property)", () => {
  it("applied, then computed again, is empty; nothing outside our names changes", () => {
    fc.assert(
      fc.property(podArb, (p) => {
        const patch = injectionPatch(p, target);
        const out = applyPatch(p, patch);
        expect(injectionPatch(out, target)).toEqual([]);
        expect(withoutOurs(out)).toEqual(withoutOurs(p));
        // Exactly one identity volume, and every selected container mounts it once with all variables.
        expect(
          (out.spec.volumes as Array<{ name: string }>).filter((v) => v.name === SVID_VOLUME_NAME),
        ).toHaveLength(1);
        const selected = p.metadata?.annotations
          ? [(p.metadata.annotations as Record<string, string>)[INJECT_CONTAINERS_ANNOTATION]]
          : (p.spec.containers ?? []).map((c) => c.name);
        for (const c of out.spec.containers ?? []) {
          const mounts = ((c.volumeMounts as Array<{ name: string }> | null) ?? []).filter(
            (m) => m.name === SVID_VOLUME_NAME,
          );
          const env = ((c.env as Array<{ name: string }> | null) ?? []).filter((e) => OURS_ENV.has(e.name));
          if (selected.includes(c.name as string)) {
            expect(mounts).toHaveLength(1);
            expect(new Set(env.map((e) => e.name))).toEqual(OURS_ENV);
          } else {
            expect(mounts).toHaveLength(0);
          }
        }
      }),
      { numRuns: 300 },
    );
  });
});
