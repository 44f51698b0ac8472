import { execFile } from "node:child_process";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { load } from "js-yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import {
  customResourceDefinition,
  type JSONSchemaProps,
  kube,
  toStructuralSchema,
  UnsupportedSchemaError,
  unescapeSlashes,
  withCel,
} from "../../core/api/openapi.ts";
import { AGENT_TASK_CRD, AgentTaskSpecSchema, DNS_LABEL_PATTERN } from "../../core/api/v1alpha1.ts";
import { TTL_PATTERN } from "../../core/duration.ts";
import { GRANT_PATTERN } from "../../core/scope.ts";
import {
  CHART_CRD_DIR,
  CHART_POLICY_DIR,
  chartPolicyTemplate,
  checkFiles,
  generatedFiles,
  HEADER,
  toYaml,
} from "../../scripts/generate.ts";

const run = promisify(execFile);
const repo = resolve(import.meta.dirname, "..", "..");

describe("toStructuralSchema on small schemas", () => {
  it("types every node and lists required keys (optional and defaulted ones are not required)", () => {
    const schema = z.object({
      b: z.string().max(3),
      a: z.string().max(3).optional(),
      c: z.string().max(3).default("x"),
      n: z.int().min(0),
      f: z.boolean(),
    });
    expect(toStructuralSchema(schema)).toEqual({
      type: "object",
      properties: {
        a: { type: "string", maxLength: 3 },
        b: { type: "string", maxLength: 3 },
        c: { type: "string", default: "x", maxLength: 3 },
        f: { type: "boolean" },
        n: { type: "integer", format: "int64", minimum: 0 },
      },
      required: ["b", "f", "n"],
    });
  });

  it("orders properties by name so that source order does not change the output", () => {
    const one = toStructuralSchema(z.object({ x: z.boolean(), a: z.boolean() }));
    expect(Object.keys(one.properties!)).toEqual(["a", "x"]);
  });

  it("turns length, regex and date-time checks into OpenAPI keywords", () => {
    expect(
      toStructuralSchema(
        z
          .string()
          .min(1)
          .max(9)
          .regex(/^a\/b$/),
      ),
    ).toEqual({
      type: "string",
      pattern: "^a/b$",
      minLength: 1,
      maxLength: 9,
    });
    expect(toStructuralSchema(z.iso.datetime({ offset: true }).max(64))).toEqual({
      type: "string",
      format: "date-time",
      maxLength: 64,
    });
  });

  it("writes enums with a maxLength so CEL cost stays bounded", () => {
    expect(toStructuralSchema(z.enum(["A", "Bcd"]))).toEqual({
      type: "string",
      enum: ["A", "Bcd"],
      maxLength: 3,
    });
  });

  it("carries descriptions from .describe() and .meta(), the outer wrapper winning", () => {
    const node = toStructuralSchema(
      z.object({ a: z.string().max(1).describe("inner").optional().describe("outer") }),
    );
    expect(node.properties?.a?.description).toBe("outer");
    expect(toStructuralSchema(z.boolean().meta({ description: "m" })).description).toBe("m");
  });

  it("writes arrays with items, bounds and list types; list-map keys must be required", () => {
    const items = z.object({ name: z.string().max(5), v: z.string().max(5).optional() });
    const node = toStructuralSchema(
      kube(z.array(items).min(1).max(4), {
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
      }),
    );
    expect(node).toMatchObject({
      type: "array",
      minItems: 1,
      maxItems: 4,
      "x-kubernetes-list-type": "map",
      "x-kubernetes-list-map-keys": ["name"],
    });
    const optionalKey = kube(z.array(items).max(4), {
      "x-kubernetes-list-type": "map",
      "x-kubernetes-list-map-keys": ["v"],
    });
    expect(() => toStructuralSchema(optionalKey)).toThrow(/list map key v must be required/);
  });

  it("writes records as additionalProperties with maxProperties and a CEL rule for key constraints", () => {
    const node = toStructuralSchema(
      kube(
        z.record(
          z
            .string()
            .min(1)
            .max(8)
            .regex(/^[a-z]+$/),
          z.string().max(4),
        ),
        { maxProperties: 5 },
      ),
    );
    expect(node).toEqual({
      type: "object",
      maxProperties: 5,
      additionalProperties: { type: "string", maxLength: 4 },
      "x-kubernetes-validations": [
        {
          rule: "self.all(k, k.size() >= 1 && k.size() <= 8 && k.matches('^[a-z]+$'))",
          message: "keys must be at least 1 and at most 8 characters and match ^[a-z]+$",
        },
      ],
    });
    expect(node).not.toHaveProperty("properties");
  });

  it("withCel puts the rule in the schema and enforces its twin at runtime", () => {
    const schema = withCel(z.object({ a: z.int().max(10), b: z.int().max(10) }), [
      {
        name: "a-le-b",
        rule: "self.a <= self.b",
        message: "a must not exceed b",
        fieldPath: ".a",
        holds: (v) => v.a <= v.b,
      },
    ]);
    expect(toStructuralSchema(schema)["x-kubernetes-validations"]).toEqual([
      { rule: "self.a <= self.b", message: "a must not exceed b", fieldPath: ".a" },
    ]);
    const result = schema.safeParse({ a: 3, b: 2 });
    expect(result.success).toBe(false);
    expect(result.error?.issues[0]).toMatchObject({ path: ["a"], message: "a must not exceed b" });
    expect(schema.safeParse({ a: 2, b: 3 }).success).toBe(true);
  });

  it("refuses what a structural schema cannot say, naming the path", () => {
    const refuse = (schema: z.ZodType, message: RegExp) => {
      expect(() => toStructuralSchema(schema)).toThrow(UnsupportedSchemaError);
      expect(() => toStructuralSchema(schema)).toThrow(message);
    };
    refuse(z.object({ u: z.union([z.string().max(1), z.int()]) }), /<root>\.u: zod type union/);
    refuse(
      z.object({
        t: z
          .string()
          .max(1)
          .transform((s) => s.length),
      }),
      /<root>\.t: transforms/,
    );
    refuse(z.object({ x: z.string().max(1) }).catchall(z.string()), /catchall/);
    refuse(z.string().max(3).regex(/a/i), /flags/);
    refuse(z.email().max(100), /string format email/);
  });

  it("refuses unbounded strings, arrays and maps unless bounds are waived", () => {
    expect(() => toStructuralSchema(z.object({ s: z.string() }))).toThrow(
      /<root>\.s: string without maxLength/,
    );
    expect(() => toStructuralSchema(z.array(z.boolean()))).toThrow(/array without maxItems/);
    expect(() => toStructuralSchema(z.record(z.string(), z.boolean()))).toThrow(/map without maxProperties/);
    expect(toStructuralSchema(z.string(), { requireBounds: false })).toEqual({ type: "string" });
  });

  it("unescapes only the \\/ that RegExp#source adds", () => {
    expect(unescapeSlashes("a\\/b\\.c\\\\/d")).toBe("a/b\\.c\\\\/d");
  });
});

type Node = JSONSchemaProps & Record<string, unknown>;

/** Every schema node with its path, including items and map values. */
function* walk(node: Node, path: string): Generator<[string, Node]> {
  yield [path, node];
  for (const [key, child] of Object.entries(node.properties ?? {}))
    yield* walk(child as Node, `${path}.${key}`);
  if (node.items) yield* walk(node.items as Node, `${path}[]`);
  if (node.additionalProperties) yield* walk(node.additionalProperties as Node, `${path}{}`);
}

describe("the generated AgentTask CRD", () => {
  const crd = customResourceDefinition(AGENT_TASK_CRD);
  const version = crd.spec.versions[0]!;
  const root = version.schema.openAPIV3Schema as Node;
  // apiVersion, kind and metadata are the apiserver's; Kubernetes forbids restricting metadata.
  const objectMeta = new Set(["<root>.apiVersion", "<root>.kind", "<root>.metadata"]);
  const nodes = [...walk(root, "<root>")];
  const ownNodes = nodes.filter(([path]) => !objectMeta.has(path));

  it("has the names, scope, status subresource and printer columns of the API", () => {
    expect(crd.metadata.name).toBe("agenttasks.custody.dev");
    expect(crd.spec).toMatchObject({
      group: "custody.dev",
      scope: "Namespaced",
      names: {
        kind: "AgentTask",
        plural: "agenttasks",
        singular: "agenttask",
        shortNames: ["at"],
        categories: ["custody"],
      },
    });
    expect(version).toMatchObject({
      name: "v1alpha1",
      served: true,
      storage: true,
      subresources: { status: {} },
    });
    const columns = version.additionalPrinterColumns.map((c) => [
      String(c.name).toUpperCase(),
      c.type,
      c.jsonPath,
      c.priority ?? 0,
    ]);
    expect(columns).toEqual([
      ["PHASE", "string", ".status.phase", 0],
      ["DELEGATOR", "string", ".status.delegator.name", 0],
      ["SPIFFE-ID", "string", ".status.spiffeID", 0],
      ["EXPIRES", "string", ".status.certificate.notAfter", 0],
      ["AGE", "date", ".metadata.creationTimestamp", 0],
      ["SCOPE", "string", ".spec.scope", 1],
      ["PARENT", "string", ".spec.parentRef.name", 1],
    ]);
  });

  it("gives every node a type", () => {
    for (const [path, node] of nodes) expect(typeof node.type, path).toBe("string");
  });

  it("uses no $ref, allOf, anyOf, oneOf, not, nullable or additionalProperties: false", () => {
    for (const [path, node] of nodes) {
      for (const key of ["$ref", "allOf", "anyOf", "oneOf", "not", "nullable"])
        expect(node, path).not.toHaveProperty(key);
      if ("additionalProperties" in node) {
        expect(typeof node.additionalProperties, path).toBe("object");
        expect(node.properties, `${path}: properties and additionalProperties are exclusive`).toBeUndefined();
      }
    }
    expect(root.additionalProperties).toBeUndefined();
  });

  it("describes metadata by type only, as structural schemas require", () => {
    expect(root.properties?.metadata).toEqual({ type: "object" });
  });

  it("bounds every string, array and map, so CEL cost estimation passes", () => {
    for (const [path, node] of ownNodes) {
      if (node.type === "string") expect(node.maxLength, path).toBeTypeOf("number");
      if (node.type === "array") {
        expect(node.maxItems, path).toBeTypeOf("number");
        expect(node.items, path).toBeDefined();
      }
      if (node.additionalProperties) expect(node.maxProperties, path).toBeTypeOf("number");
    }
  });

  it("describes every field", () => {
    for (const [path, node] of ownNodes) {
      // Array items and map values are described by their field.
      if (path.endsWith("[]") && node.type !== "object") continue;
      if (path.endsWith("{}")) continue;
      expect(node.description, path).toBeTruthy();
    }
  });

  it("keeps list-map keys required and list-set items scalar", () => {
    for (const [path, node] of nodes) {
      if (node["x-kubernetes-list-type"] === "map") {
        for (const key of node["x-kubernetes-list-map-keys"] ?? [])
          expect(node.items?.required, path).toContain(key);
      }
      if (node["x-kubernetes-list-type"] === "set") expect(node.items?.type, path).not.toBe("object");
    }
  });

  it("carries the scope grammar, ttl default and range, and the name rules", () => {
    const spec = root.properties!.spec!;
    expect(spec.required).toEqual(["agent", "scope", "serviceAccountName"]);
    expect(spec.properties!.scope).toMatchObject({
      minItems: 1,
      maxItems: 64,
      "x-kubernetes-list-type": "set",
      items: { type: "string", pattern: GRANT_PATTERN, maxLength: 256 },
    });
    const ttl = spec.properties!.ttl!;
    expect(ttl).toMatchObject({ default: "1h", pattern: TTL_PATTERN });
    expect(ttl["x-kubernetes-validations"]?.[0]?.rule).toContain("duration(self) >= duration('5m')");
    expect(ttl["x-kubernetes-validations"]?.[0]?.rule).toContain("duration(self) <= duration('24h')");
    expect(spec.properties!.deadline).toMatchObject({ type: "string", format: "date-time" });
    expect(root["x-kubernetes-validations"]?.map((v) => v.rule)).toEqual([
      "self.metadata.name.size() <= 63",
      `self.metadata.name.size() > 63 || self.metadata.name.matches('${DNS_LABEL_PATTERN}')`,
    ]);
    const conditions = root.properties!.status!.properties!.conditions!;
    expect(conditions).toMatchObject({
      "x-kubernetes-list-type": "map",
      "x-kubernetes-list-map-keys": ["type"],
    });
  });

  it("has a default that the zod schema accepts (the apiserver validates defaults too)", () => {
    const ttlDefault = root.properties!.spec!.properties!.ttl!.default;
    const spec = { agent: { name: "a" }, scope: ["read:a"], serviceAccountName: "sa", ttl: ttlDefault };
    expect(AgentTaskSpecSchema.safeParse(spec).success).toBe(true);
  });
});

describe("toYaml", () => {
  it("round-trips the CRD through a YAML parser", () => {
    const crd = customResourceDefinition(AGENT_TASK_CRD);
    expect(load(toYaml(crd))).toEqual(crd);
  });

  it("quotes strings that YAML 1.1 or 1.2 would read as something else", () => {
    const tricky = {
      a: "True",
      b: "no",
      c: "1h",
      d: "a: b",
      e: "#x",
      f: "*",
      g: "",
      h: "-1",
      i: " lead",
      j: "null",
      k: "é",
      l: "line\nbreak",
      m: "5",
      n: "on",
      o: "y",
    };
    const yaml = toYaml(tricky);
    expect(load(yaml)).toEqual(tricky);
    for (const word of ["True", "no", "null", "on", "y"]) expect(yaml).toContain(`"${word}"`);
  });

  it("writes empty collections inline and nested lists without extra indentation", () => {
    expect(toYaml({ a: {}, b: [], c: [{ d: 1, e: [2] }] })).toBe("a: {}\nb: []\nc:\n- d: 1\n  e:\n  - 2\n");
  });
});

describe("scripts/generate.ts", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "custody-generate-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const script = join(repo, "scripts", "generate.ts");
  const node = (args: string[]) => run(process.execPath, [script, ...args], { cwd: repo });

  it("generates the same bytes every time, with the header", () => {
    const [name, first] = [...generatedFiles()][0]!;
    expect(name).toBe("crds/custody.dev_agenttasks.yaml");
    expect(first.startsWith(HEADER)).toBe(true);
    expect(generatedFiles().get(name)).toBe(first);
  });

  it("the committed crds/ and the chart's generated templates are up to date", async () => {
    expect((await checkFiles(repo)).stale).toEqual([]);
  });

  it("also writes the CRD and every webhook/manifests file into the chart as templates", async () => {
    const names = [...generatedFiles().keys()];
    expect(names).toContain(`${CHART_CRD_DIR}/custody.dev_agenttasks.yaml`);
    const manifests = (await readdir(join(repo, "webhook", "manifests"))).filter((f) => f.endsWith(".yaml"));
    for (const f of manifests) expect(names).toContain(`${CHART_POLICY_DIR}/${f}`);
    const crd = generatedFiles().get(`${CHART_CRD_DIR}/custody.dev_agenttasks.yaml`)!;
    expect(crd).toContain("{{- if .Values.crds.install }}");
    expect(crd).toContain("helm.sh/resource-policy: keep");
  });

  it("refuses a manifest it cannot template safely", () => {
    const policy = (name: string, extra = "") =>
      `apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata:\n  name: ${name}\n  labels:\n    app.kubernetes.io/managed-by: custody\n${extra}spec: {}\n`;
    expect(chartPolicyTemplate("ok.yaml", policy("custody-ok"))).toContain(
      'name: {{ include "custody.fullname" . }}-ok',
    );
    expect(() => chartPolicyTemplate("x.yaml", policy("other-name"))).toThrow(/custody-<name>/);
    expect(() => chartPolicyTemplate("x.yaml", policy("custody-x", "# {{ .Values }}\n"))).toThrow(
      /template action/,
    );
    expect(() =>
      chartPolicyTemplate("x.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: custody-x\n"),
    ).toThrow(/not an admission policy/);
  });

  it("--check fails on a missing file, passes after writing, fails again after an edit", async () => {
    const missing = await node(["--check", "--out", dir]).catch((e: { code: number; stderr: string }) => e);
    expect(missing).toMatchObject({ code: 1 });
    expect((missing as { stderr: string }).stderr).toContain("custody.dev_agenttasks.yaml");

    await node(["--out", dir]);
    await expect(node(["--check", "--out", dir])).resolves.toMatchObject({ stderr: "" });

    const file = join(dir, "crds", "custody.dev_agenttasks.yaml");
    await writeFile(file, (await readFile(file, "utf8")).replace("maxItems: 64", "maxItems: 65"));
    const stale = await node(["--check", "--out", dir]).catch((e: { code: number; stderr: string }) => e);
    expect(stale).toMatchObject({ code: 1 });
    expect((stale as { stderr: string }).stderr).toMatch(/stale[\s\S]*custody\.dev_agenttasks\.yaml/);
  }, 30_000); // four generator processes: seconds each on a busy 2-core machine

  it("refuses unknown arguments", async () => {
    await expect(node(["--bogus"])).rejects.toMatchObject({ code: 1 });
  });
});
