/**
 * AgentPolicy (namespaced) and ClusterAgentPolicy (cluster-wide): rules in
 * CEL that decide, for the tasks they select, whether a credential may be
 * issued (and for how long, with which scope) and whether an action may be
 * taken. One zod schema is the TS type, the runtime validation and the CRDs'
 * OpenAPI (scripts/generate.ts). Semantics: docs/policy.md.
 */
import { z } from "zod";
import { parseTtl, TTL_PATTERN } from "../duration.ts";
import { ValidationError } from "../errors.ts";
import { GRANT_PATTERN, MAX_GRANT_LENGTH, MAX_SCOPE_GRANTS } from "../scope.ts";
import { MAX_DNS_LABEL_LENGTH } from "../spiffe.ts";
import { type CustomResourceDescription, kube } from "./openapi.ts";
import {
  coreRefinement,
  DELEGATOR_KINDS,
  DNS_LABEL_PATTERN,
  formatFieldPath,
  GROUP,
  VERSION,
} from "./v1alpha1.ts";

export const POLICY_KIND = "AgentPolicy";
export const POLICY_PLURAL = "agentpolicies";
export const CLUSTER_POLICY_KIND = "ClusterAgentPolicy";
export const CLUSTER_POLICY_PLURAL = "clusteragentpolicies";

/** Bounds checked at apply time, so that evaluation cost is bounded before anything runs. */
export const MAX_EXPRESSION_LENGTH = 2048;
export const MAX_RULES = 32;
export const MAX_MESSAGE_LENGTH = 512;
export const MAX_SELECTOR_ITEMS = 32;

export const STAGES = ["issuance", "action"] as const;
export type Stage = (typeof STAGES)[number];

const expression = (description: string) =>
  z
    .string()
    .min(1)
    .max(MAX_EXPRESSION_LENGTH)
    .describe(`${description} (CEL; see docs/policy.md for the variables)`);
const name = (description: string) =>
  z.string().min(1).max(MAX_DNS_LABEL_LENGTH).regex(new RegExp(DNS_LABEL_PATTERN)).describe(description);
const shortText = (max: number, description: string) => z.string().min(1).max(max).describe(description);
const list = <T extends z.ZodType>(item: T, description: string) =>
  kube(z.array(item).max(MAX_SELECTOR_ITEMS), { "x-kubernetes-list-type": "atomic" })
    .optional()
    .describe(description);

const duration = z
  .string()
  .max(32)
  .regex(new RegExp(TTL_PATTERN))
  .superRefine(coreRefinement("maxTtl", parseTtl));

export const PolicySelectorSchema = z
  .object({
    namespaces: list(
      name("A namespace"),
      "ClusterAgentPolicy only: the namespaces whose tasks it selects (all when absent).",
    ),
    agents: list(name("An agent name"), "Tasks whose spec.agent.name is one of these."),
    models: list(
      z.object({
        provider: shortText(63, "Model provider").optional(),
        name: shortText(128, "Model name").optional(),
        version: shortText(64, "Model version").optional(),
      }),
      "Tasks whose spec.agent.model matches one of these (each given field equal).",
    ),
    tools: list(shortText(63, "A tool name"), "Tasks that use any of these tools."),
    delegators: list(
      z.object({
        kind: z.enum(DELEGATOR_KINDS).describe("Principal kind."),
        name: shortText(253, "Principal name").optional(),
      }),
      "Tasks whose proven root delegator matches one of these (kind, and name when given).",
    ),
    delegatorGroups: list(
      shortText(253, "A group"),
      "Tasks whose proven root delegator (a User) was in any of these groups at admission.",
    ),
    matchLabels: kube(z.record(z.string().max(317), z.string().max(63)), { maxProperties: 32 })
      .optional()
      .describe(
        "Labels the task carried when it was created (as admission recorded them); relabelling does not change them.",
      ),
  })
  .describe(
    "Which tasks the policy applies to: only facts that cannot change after creation. " +
      "Every field given must match (AND); within a list any entry may (OR). Empty: every task in scope.",
  );

export const PolicyRuleSchema = z
  .object({
    name: name("Rule name, unique in the policy; decisions name it."),
    stages: list(
      z.enum(STAGES),
      "Where the rule runs: issuance (and renewal), action (decision endpoint). Default both.",
    ),
    when: expression("Optional guard: the rule applies only where this is true").optional(),
    deny: expression("Deny where this is true").optional(),
    allow: expression("Deny where this is false (an allow-list rule)").optional(),
    message: shortText(MAX_MESSAGE_LENGTH, "The reason a denial gives").optional(),
    maxTtl: duration
      .optional()
      .describe("Issuance: certificates live at most this long (5m..24h, e.g. 15m)."),
    scopeCeiling: kube(
      z.array(z.string().max(MAX_GRANT_LENGTH).regex(new RegExp(GRANT_PATTERN))).max(MAX_SCOPE_GRANTS),
      { "x-kubernetes-list-type": "atomic" },
    )
      .optional()
      .describe("Issuance: grants of the task not covered by one of these are dropped."),
  })
  .describe("One rule: deny, allow-only-if, or narrow (maxTtl, scopeCeiling), optionally guarded by `when`.");

export const AgentPolicySpecSchema = z
  .object({
    selector: PolicySelectorSchema.optional(),
    rules: kube(z.array(PolicyRuleSchema).min(1).max(MAX_RULES), {
      "x-kubernetes-list-type": "map",
      "x-kubernetes-list-map-keys": ["name"],
    }).describe("The rules; a deny from any rule wins."),
  })
  .describe("Rules for the tasks the selector picks.");

export const AgentPolicyStatusSchema = z
  .object({
    version: z
      .string()
      .max(80)
      .optional()
      .describe("sha256:<hex> of the policy's content: what decisions record."),
    observedGeneration: z.int().min(0).optional().describe("The generation the version belongs to."),
  })
  .describe("What Custody compiled.");

export type AgentPolicySpec = z.output<typeof AgentPolicySpecSchema>;
export type PolicyRule = z.output<typeof PolicyRuleSchema>;
export type PolicySelector = z.output<typeof PolicySelectorSchema>;

export interface AgentPolicy {
  apiVersion: string;
  kind: typeof POLICY_KIND | typeof CLUSTER_POLICY_KIND;
  metadata: { name: string; namespace?: string; uid?: string; generation?: number; resourceVersion?: string };
  spec: AgentPolicySpec;
  status?: z.output<typeof AgentPolicyStatusSchema>;
}

/** Validates a policy spec (shape only; expressions are compiled by core/policy/compile.ts). */
export function parseAgentPolicySpec(obj: unknown): AgentPolicySpec {
  const result = AgentPolicySpecSchema.safeParse(obj);
  if (result.success) return result.data;
  const issue = result.error.issues[0]!;
  const field = formatFieldPath("spec", issue.path);
  const rule =
    issue.code === "custom" && typeof issue.params?.rule === "string"
      ? issue.params.rule
      : issue.code === "invalid_type" && issue.input === undefined
        ? "required"
        : issue.code;
  // A core validator's message already reads "<label>: <detail> (rule r)": keep its detail and rule.
  const label = issue.code === "custom" ? issue.params?.label : undefined;
  if (typeof label === "string" && issue.message.startsWith(`${label}: `)) {
    throw new ValidationError(field, rule, `${field}: ${issue.message.slice(label.length + 2)}`);
  }
  const detail = issue.code === "invalid_type" && issue.input === undefined ? "is required" : issue.message;
  throw new ValidationError(
    field,
    rule,
    `${field}: ${detail.replace(/^Invalid input: /, "")} (rule ${rule})`,
  );
}

const description = (kind: string, scope: string) =>
  `${kind} holds CEL rules that decide, ${scope}, whether Custody issues a credential (and for ` +
  "how long, with which scope) and whether an agent's action is allowed.";

export const AGENT_POLICY_CRD: CustomResourceDescription = {
  group: GROUP,
  version: VERSION,
  kind: POLICY_KIND,
  plural: POLICY_PLURAL,
  singular: "agentpolicy",
  shortNames: ["ap"],
  categories: ["custody"],
  scope: "Namespaced",
  description: description(POLICY_KIND, "for the tasks of its namespace"),
  spec: AgentPolicySpecSchema,
  status: AgentPolicyStatusSchema,
  rootValidations: [],
  printerColumns: [
    { name: "Rules", type: "integer", jsonPath: ".spec.rules[*].name", priority: 1 },
    { name: "Version", type: "string", jsonPath: ".status.version" },
    { name: "Age", type: "date", jsonPath: ".metadata.creationTimestamp" },
  ],
};

export const CLUSTER_AGENT_POLICY_CRD: CustomResourceDescription = {
  ...AGENT_POLICY_CRD,
  kind: CLUSTER_POLICY_KIND,
  plural: CLUSTER_POLICY_PLURAL,
  singular: "clusteragentpolicy",
  shortNames: ["cap"],
  scope: "Cluster",
  description: description(CLUSTER_POLICY_KIND, "for tasks in every namespace its selector names"),
};
