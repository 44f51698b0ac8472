/**
 * Zod → Kubernetes structural OpenAPI v3 (the `openAPIV3Schema` of a CRD).
 *
 * The converter walks the zod schema itself instead of post-processing
 * `z.toJSONSchema`: a CRD accepts only a small, exact subset of JSON Schema
 * (every node typed, no `$ref`, no `additionalProperties: false`, value
 * validations only where the apiserver allows them), so an explicit walk that
 * refuses anything outside that subset is easier to get right and to test.
 *
 * What the walk reads:
 * - zod types: string, number/int, boolean, enum, literal (string), object,
 *   array, record (string keys), optional, default, readonly;
 * - zod checks: min/max length, regex (→ `pattern`), ISO date-time
 *   (→ `format: date-time`), int format and bounds; `refine`/`superRefine`
 *   checks are runtime-only and are skipped (mirror them with a CEL rule,
 *   see `withCel`);
 * - metadata (`.describe()` / `.meta()`): `description`, `maxProperties`,
 *   `x-kubernetes-validations`, `x-kubernetes-list-type`,
 *   `x-kubernetes-list-map-keys`, `x-kubernetes-map-type`.
 *
 * With `requireBounds` (the default) every string needs a `maxLength`, every
 * array a `maxItems` and every map a `maxProperties`: without them the CEL
 * cost estimator assumes the request-size worst case and refuses rules.
 */
import { z } from "zod";

/** One entry of `x-kubernetes-validations`. */
export interface CelValidation {
  readonly rule: string;
  readonly message?: string;
  readonly messageExpression?: string;
  /** JSONPath-like, relative to the node carrying the rule, e.g. `.namespace`. */
  readonly fieldPath?: string;
  readonly reason?:
    | "FieldValueInvalid"
    | "FieldValueForbidden"
    | "FieldValueRequired"
    | "FieldValueDuplicate";
  readonly optionalOldSelf?: boolean;
}

/** The metadata keys the converter understands, set with `.meta()` or `kube()`. */
export interface KubeMeta {
  readonly description?: string;
  readonly maxProperties?: number;
  readonly "x-kubernetes-validations"?: readonly CelValidation[];
  readonly "x-kubernetes-list-type"?: "atomic" | "set" | "map";
  readonly "x-kubernetes-list-map-keys"?: readonly string[];
  readonly "x-kubernetes-map-type"?: "granular" | "atomic";
}

/** The subset of apiextensions.k8s.io/v1 JSONSchemaProps the converter emits. */
export interface JSONSchemaProps {
  description?: string;
  type?: "object" | "array" | "string" | "integer" | "number" | "boolean";
  format?: string;
  enum?: unknown[];
  default?: unknown;
  pattern?: string;
  minLength?: number;
  maxLength?: number;
  minItems?: number;
  maxItems?: number;
  maxProperties?: number;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: boolean;
  exclusiveMaximum?: boolean;
  items?: JSONSchemaProps;
  properties?: Record<string, JSONSchemaProps>;
  additionalProperties?: JSONSchemaProps;
  required?: string[];
  "x-kubernetes-validations"?: CelValidation[];
  "x-kubernetes-list-type"?: "atomic" | "set" | "map";
  "x-kubernetes-list-map-keys"?: string[];
  "x-kubernetes-map-type"?: "granular" | "atomic";
}

export interface ConvertOptions {
  /** Refuse unbounded strings, arrays and maps (default true). */
  readonly requireBounds?: boolean;
}

/** A schema node the converter cannot express as a structural schema. */
export class UnsupportedSchemaError extends Error {
  readonly path: string;
  constructor(path: string, message: string) {
    super(`${path}: ${message}`);
    this.name = "UnsupportedSchemaError";
    this.path = path;
  }
}

// Emission order of keys within one node: the YAML reads top-down as
// "what it is, what it allows, what it contains, extra rules".
const KEY_ORDER: readonly (keyof JSONSchemaProps)[] = [
  "description",
  "type",
  "format",
  "enum",
  "default",
  "pattern",
  "minLength",
  "maxLength",
  "minimum",
  "exclusiveMinimum",
  "maximum",
  "exclusiveMaximum",
  "minItems",
  "maxItems",
  "maxProperties",
  "items",
  "properties",
  "additionalProperties",
  "required",
  "x-kubernetes-list-type",
  "x-kubernetes-list-map-keys",
  "x-kubernetes-map-type",
  "x-kubernetes-validations",
];

const CEL_KEY_ORDER: readonly (keyof CelValidation)[] = [
  "rule",
  "message",
  "messageExpression",
  "fieldPath",
  "reason",
  "optionalOldSelf",
];

/** Attaches Kubernetes metadata; `x-kubernetes-validations` add to those already present. */
export function kube<S extends z.ZodType>(schema: S, meta: KubeMeta): S {
  const existing = (z.globalRegistry.get(schema) ?? {}) as KubeMeta;
  const validations = [
    ...(existing["x-kubernetes-validations"] ?? []),
    ...(meta["x-kubernetes-validations"] ?? []),
  ];
  return schema.meta({
    ...meta,
    ...(validations.length > 0 ? { "x-kubernetes-validations": validations } : {}),
  });
}

/** A CEL rule for the apiserver together with its JavaScript twin for runtime parsing. */
export interface CelCheck<T> extends CelValidation {
  /** Rule name reported in ValidationError.rule, e.g. `namespace-only-for-service-account`. */
  readonly name: string;
  readonly message: string;
  /** Must agree with `rule` on every value that passes the schema's other checks. */
  readonly holds: (value: T) => boolean;
}

/**
 * Adds CEL rules to the CRD and the same rules as zod refinements, so the
 * apiserver and `parse` reject the same objects with the same message.
 */
export function withCel<S extends z.ZodType>(schema: S, checks: readonly CelCheck<z.output<S>>[]): S {
  const refined = schema.superRefine((value, ctx) => {
    for (const check of checks) {
      if (check.holds(value as z.output<S>)) continue;
      ctx.addIssue({
        code: "custom",
        message: check.message,
        path: fieldPathToZodPath(check.fieldPath),
        params: { rule: check.name },
      });
    }
  }) as S;
  return kube(refined, {
    "x-kubernetes-validations": checks.map(({ name: _name, holds: _holds, ...rule }) => rule),
  });
}

function fieldPathToZodPath(fieldPath: string | undefined): string[] {
  if (fieldPath === undefined) return [];
  if (!/^(\.[A-Za-z_][A-Za-z0-9_]*)+$/.test(fieldPath)) {
    throw new Error(`withCel: fieldPath ${JSON.stringify(fieldPath)} must be a chain of .field selectors`);
  }
  return fieldPath.slice(1).split(".");
}

/** Quotes `s` as a CEL single-quoted string literal. */
export function celString(s: string): string {
  return `'${s.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;
}

interface Unwrapped {
  readonly inner: z.ZodType;
  readonly optional: boolean;
  readonly hasDefault: boolean;
  readonly defaultValue: unknown;
  readonly meta: KubeMeta;
}

// biome-ignore lint/suspicious/noExplicitAny: zod's internal definitions are untyped at this level
type AnyDef = any;

function defOf(schema: z.ZodType): AnyDef {
  return (schema as unknown as { _zod: { def: AnyDef } })._zod.def;
}

/** Peels optional/default/readonly wrappers, merging their metadata (outer wins, validations add up). */
function unwrap(schema: z.ZodType, path: string): Unwrapped {
  const metas: KubeMeta[] = [];
  let current = schema;
  let optional = false;
  let hasDefault = false;
  let defaultValue: unknown;
  for (;;) {
    const meta = z.globalRegistry.get(current) as KubeMeta | undefined;
    if (meta) metas.push(meta);
    const def = defOf(current);
    if (def.type === "optional") {
      optional = true;
      current = def.innerType;
    } else if (def.type === "default") {
      if (!hasDefault) {
        hasDefault = true;
        defaultValue = structuredClone(def.defaultValue);
      }
      current = def.innerType;
    } else if (def.type === "readonly") {
      current = def.innerType;
    } else if (def.type === "pipe" || def.type === "transform") {
      throw new UnsupportedSchemaError(path, "transforms and pipes have no OpenAPI form");
    } else {
      break;
    }
  }
  // metas runs outer → inner; apply inner first so outer values override.
  let meta: KubeMeta = {};
  for (const m of metas.reverse()) {
    meta = {
      ...meta,
      ...m,
      "x-kubernetes-validations": [
        ...(meta["x-kubernetes-validations"] ?? []),
        ...(m["x-kubernetes-validations"] ?? []),
      ],
    };
  }
  return { inner: current, optional, hasDefault, defaultValue, meta };
}

interface CheckDef {
  check: string;
  [k: string]: unknown;
}

function checksOf(schema: z.ZodType): CheckDef[] {
  const checks: { _zod: { def: CheckDef } }[] = defOf(schema).checks ?? [];
  return checks.map((c) => c._zod.def);
}

/**
 * Converts a zod schema to a structural schema node. Throws
 * UnsupportedSchemaError naming the path of anything it cannot express.
 */
export function toStructuralSchema(
  schema: z.ZodType,
  options: ConvertOptions = {},
  path = "<root>",
): JSONSchemaProps {
  const requireBounds = options.requireBounds ?? true;
  const { inner, hasDefault, defaultValue, meta } = unwrap(schema, path);
  const node = convertNode(inner, { requireBounds }, path);
  if (hasDefault) node.default = defaultValue;
  if (meta.description !== undefined) node.description = meta.description;
  if (meta.maxProperties !== undefined) {
    if (node.type !== "object" || node.additionalProperties === undefined) {
      throw new UnsupportedSchemaError(path, "maxProperties is only for maps (z.record)");
    }
    node.maxProperties = meta.maxProperties;
  }
  const validations = [
    ...(node["x-kubernetes-validations"] ?? []),
    ...(meta["x-kubernetes-validations"] ?? []),
  ];
  if (validations.length > 0) node["x-kubernetes-validations"] = validations;
  if (meta["x-kubernetes-list-type"] !== undefined) {
    if (node.type !== "array")
      throw new UnsupportedSchemaError(path, "x-kubernetes-list-type needs an array");
    node["x-kubernetes-list-type"] = meta["x-kubernetes-list-type"];
  }
  if (meta["x-kubernetes-list-map-keys"] !== undefined) {
    checkListMapKeys(node, meta["x-kubernetes-list-map-keys"], path);
    node["x-kubernetes-list-map-keys"] = [...meta["x-kubernetes-list-map-keys"]];
  }
  if (meta["x-kubernetes-map-type"] !== undefined)
    node["x-kubernetes-map-type"] = meta["x-kubernetes-map-type"];
  if (requireBounds) checkBounds(node, path);
  return orderKeys(node);
}

function checkListMapKeys(node: JSONSchemaProps, keys: readonly string[], path: string): void {
  if (node["x-kubernetes-list-type"] !== "map") {
    throw new UnsupportedSchemaError(path, "x-kubernetes-list-map-keys needs x-kubernetes-list-type: map");
  }
  for (const key of keys) {
    const item = node.items;
    const keySchema = item?.properties?.[key];
    if (!keySchema)
      throw new UnsupportedSchemaError(path, `list map key ${key} is not a property of the items`);
    // The apiserver requires map keys to be required or defaulted scalars.
    if (!item?.required?.includes(key) && keySchema.default === undefined) {
      throw new UnsupportedSchemaError(path, `list map key ${key} must be required or have a default`);
    }
  }
}

function checkBounds(node: JSONSchemaProps, path: string): void {
  if (node.type === "string" && node.maxLength === undefined) {
    throw new UnsupportedSchemaError(path, "string without maxLength (add .max(n))");
  }
  if (node.type === "array" && node.maxItems === undefined) {
    throw new UnsupportedSchemaError(path, "array without maxItems (add .max(n))");
  }
  if (node.type === "object" && node.additionalProperties !== undefined && node.maxProperties === undefined) {
    throw new UnsupportedSchemaError(path, "map without maxProperties (add meta maxProperties)");
  }
}

function convertNode(schema: z.ZodType, options: Required<ConvertOptions>, path: string): JSONSchemaProps {
  const def = defOf(schema);
  switch (def.type) {
    case "string":
      return convertString(schema, path);
    case "number":
      return convertNumber(schema, path);
    case "boolean":
      return { type: "boolean" };
    case "enum":
    case "literal": {
      const values: unknown[] = def.type === "enum" ? Object.values(def.entries) : [...def.values];
      if (!values.every((v): v is string => typeof v === "string")) {
        throw new UnsupportedSchemaError(path, "only string enums and literals are supported");
      }
      return { type: "string", enum: values, maxLength: Math.max(...values.map((v) => v.length)) };
    }
    case "array": {
      const node: JSONSchemaProps = {
        type: "array",
        items: toStructuralSchema(def.element, options, `${path}[]`),
      };
      for (const check of checksOf(schema)) {
        if (check.check === "min_length") node.minItems = check.minimum as number;
        else if (check.check === "max_length") node.maxItems = check.maximum as number;
        else if (check.check === "length_equals") node.minItems = node.maxItems = check.length as number;
        else if (check.check !== "custom")
          throw new UnsupportedSchemaError(path, `array check ${check.check}`);
      }
      return node;
    }
    case "object": {
      const shape = def.shape as Record<string, z.ZodType>;
      const properties: Record<string, JSONSchemaProps> = {};
      const required: string[] = [];
      for (const key of Object.keys(shape).sort()) {
        const child = shape[key]!;
        properties[key] = toStructuralSchema(child, options, `${path}.${key}`);
        const { optional, hasDefault } = unwrap(child, `${path}.${key}`);
        if (!optional && !hasDefault) required.push(key);
      }
      if (def.catchall !== undefined && defOf(def.catchall).type !== "never") {
        throw new UnsupportedSchemaError(path, "objects with a catchall are not structural; use z.record");
      }
      const node: JSONSchemaProps = { type: "object", properties };
      if (required.length > 0) node.required = required;
      return node;
    }
    case "record": {
      if (defOf(def.keyType).type !== "string") {
        throw new UnsupportedSchemaError(path, "map keys must be plain strings");
      }
      const node: JSONSchemaProps = {
        type: "object",
        additionalProperties: toStructuralSchema(def.valueType, options, `${path}{}`),
      };
      const keyRule = mapKeyRule(def.keyType, path);
      if (keyRule) node["x-kubernetes-validations"] = [keyRule];
      return node;
    }
    default:
      throw new UnsupportedSchemaError(path, `zod type ${def.type} has no structural OpenAPI form`);
  }
}

interface StringBounds {
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  format?: string;
}

function stringBounds(schema: z.ZodType, path: string): StringBounds {
  const bounds: StringBounds = {};
  for (const check of checksOf(schema)) {
    switch (check.check) {
      case "min_length":
        bounds.minLength = check.minimum as number;
        break;
      case "max_length":
        bounds.maxLength = check.maximum as number;
        break;
      case "length_equals":
        bounds.minLength = bounds.maxLength = check.length as number;
        break;
      case "string_format":
        applyFormat(bounds, check, path);
        break;
      case "custom":
        break; // runtime refinement; its CEL twin (if any) lives in metadata
      default:
        throw new UnsupportedSchemaError(path, `string check ${check.check}`);
    }
  }
  // z.iso.datetime() and friends keep their format on the definition, not in checks.
  const def = defOf(schema);
  if (def.check === "string_format") applyFormat(bounds, def as CheckDef, path);
  return bounds;
}

function applyFormat(bounds: StringBounds, check: CheckDef, path: string): void {
  if (check.format === "regex") {
    const regex = check.pattern as RegExp;
    if (regex.flags !== "")
      throw new UnsupportedSchemaError(path, `regex flags /${regex.flags} not supported`);
    if (bounds.pattern !== undefined) throw new UnsupportedSchemaError(path, "more than one regex");
    bounds.pattern = unescapeSlashes(regex.source);
  } else if (check.format === "datetime") {
    // Kubernetes checks RFC 3339 itself; zod's JS-only pattern stays out of the CRD.
    bounds.format = "date-time";
  } else {
    throw new UnsupportedSchemaError(path, `string format ${String(check.format)}`);
  }
}

/**
 * `RegExp#source` escapes `/` as `\/`. RE2 would accept that too, but the
 * CRD should carry the pattern exactly as written (e.g. GRANT_PATTERN).
 */
export function unescapeSlashes(source: string): string {
  let out = "";
  for (let i = 0; i < source.length; i++) {
    const c = source[i]!;
    if (c === "\\" && i + 1 < source.length) {
      const next = source[i + 1]!;
      out += next === "/" ? "/" : c + next;
      i++;
    } else {
      out += c;
    }
  }
  return out;
}

function convertString(schema: z.ZodType, path: string): JSONSchemaProps {
  const { minLength, maxLength, pattern, format } = stringBounds(schema, path);
  const node: JSONSchemaProps = { type: "string" };
  if (format !== undefined) node.format = format;
  if (pattern !== undefined) node.pattern = pattern;
  if (minLength !== undefined) node.minLength = minLength;
  if (maxLength !== undefined) node.maxLength = maxLength;
  return node;
}

function convertNumber(schema: z.ZodType, path: string): JSONSchemaProps {
  const node: JSONSchemaProps = { type: "number" };
  const def = defOf(schema);
  const checks = checksOf(schema);
  if (def.check === "number_format") checks.unshift(def as CheckDef);
  for (const check of checks) {
    switch (check.check) {
      case "number_format":
        node.type = "integer";
        node.format = check.format === "int32" ? "int32" : "int64";
        break;
      case "greater_than":
        node.minimum = check.value as number;
        if (check.inclusive !== true) node.exclusiveMinimum = true;
        break;
      case "less_than":
        node.maximum = check.value as number;
        if (check.inclusive !== true) node.exclusiveMaximum = true;
        break;
      case "custom":
        break;
      default:
        throw new UnsupportedSchemaError(path, `number check ${check.check}`);
    }
  }
  return node;
}

/**
 * OpenAPI has no `propertyNames` in a CRD, so key constraints become one CEL
 * rule on the map. Key size is checked before `matches` so that the regex
 * never runs on an oversized key.
 */
function mapKeyRule(keyType: z.ZodType, path: string): CelValidation | undefined {
  const { minLength, maxLength, pattern, format } = stringBounds(keyType, `${path}{key}`);
  if (format !== undefined) throw new UnsupportedSchemaError(path, "map keys cannot have a format");
  const conditions: string[] = [];
  const words: string[] = [];
  if (minLength !== undefined) {
    conditions.push(`k.size() >= ${minLength}`);
    words.push(`at least ${minLength}`);
  }
  if (maxLength !== undefined) {
    conditions.push(`k.size() <= ${maxLength}`);
    words.push(`at most ${maxLength}`);
  }
  if (conditions.length === 0 && pattern === undefined) return undefined;
  let message = `keys must be ${words.join(" and ")} characters`;
  if (pattern !== undefined) {
    conditions.push(`k.matches(${celString(pattern)})`);
    message = words.length > 0 ? `${message} and match ${pattern}` : `keys must match ${pattern}`;
  }
  return { rule: `self.all(k, ${conditions.join(" && ")})`, message };
}

function orderKeys(node: JSONSchemaProps): JSONSchemaProps {
  const ordered: Record<string, unknown> = {};
  for (const key of KEY_ORDER) {
    const value = node[key];
    if (value === undefined) continue;
    ordered[key] =
      key === "x-kubernetes-validations"
        ? (value as CelValidation[]).map((rule) => {
            const out: Record<string, unknown> = {};
            for (const k of CEL_KEY_ORDER) if (rule[k] !== undefined) out[k] = rule[k];
            return out;
          })
        : value;
  }
  const unknownKeys = Object.keys(node).filter((k) => !KEY_ORDER.includes(k as keyof JSONSchemaProps));
  if (unknownKeys.length > 0) throw new Error(`orderKeys: unexpected keys ${unknownKeys.join(", ")}`);
  return ordered as JSONSchemaProps;
}

export interface PrinterColumn {
  readonly name: string;
  readonly type: "string" | "integer" | "number" | "boolean" | "date";
  readonly jsonPath: string;
  readonly description?: string;
  readonly priority?: number;
  readonly format?: string;
}

export interface CustomResourceDescription {
  readonly group: string;
  readonly version: string;
  readonly kind: string;
  readonly plural: string;
  readonly singular: string;
  readonly shortNames: readonly string[];
  readonly categories: readonly string[];
  readonly scope: "Namespaced" | "Cluster";
  readonly description: string;
  readonly spec: z.ZodType;
  readonly status: z.ZodType;
  /** CEL rules on the object root; they may read `self.metadata.name`. */
  readonly rootValidations: readonly CelValidation[];
  readonly printerColumns: readonly PrinterColumn[];
}

/** A complete apiextensions.k8s.io/v1 CustomResourceDefinition with one served, stored version. */
export function customResourceDefinition(d: CustomResourceDescription, options: ConvertOptions = {}) {
  const root: JSONSchemaProps = {
    description: d.description,
    type: "object",
    properties: {
      apiVersion: {
        description:
          "APIVersion defines the versioned schema of this representation of an object. " +
          "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources",
        type: "string",
      },
      kind: {
        description:
          "Kind is a string value representing the REST resource this object represents. " +
          "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
        type: "string",
      },
      // Structural schemas may not describe metadata beyond its type; name
      // rules go into root-level CEL, which can read metadata.name.
      metadata: { type: "object" },
      spec: toStructuralSchema(d.spec, options, "spec"),
      status: toStructuralSchema(d.status, options, "status"),
    },
    required: ["spec"],
  };
  if (d.rootValidations.length > 0) root["x-kubernetes-validations"] = [...d.rootValidations];
  return {
    apiVersion: "apiextensions.k8s.io/v1",
    kind: "CustomResourceDefinition",
    metadata: { name: `${d.plural}.${d.group}` },
    spec: {
      group: d.group,
      names: {
        kind: d.kind,
        listKind: `${d.kind}List`,
        plural: d.plural,
        singular: d.singular,
        shortNames: [...d.shortNames],
        categories: [...d.categories],
      },
      scope: d.scope,
      versions: [
        {
          name: d.version,
          served: true,
          storage: true,
          subresources: { status: {} },
          additionalPrinterColumns: d.printerColumns.map((c) => {
            const col: Record<string, unknown> = { name: c.name, type: c.type };
            if (c.format !== undefined) col.format = c.format;
            if (c.description !== undefined) col.description = c.description;
            col.jsonPath = c.jsonPath;
            if (c.priority !== undefined) col.priority = c.priority;
            return col;
          }),
          schema: { openAPIV3Schema: orderKeys(root) },
        },
      ],
    },
  };
}
