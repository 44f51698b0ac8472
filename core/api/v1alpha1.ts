/**
 * The AgentTask API, custody.dev/v1alpha1: zod schemas are the single source
 * of truth. `scripts/generate.ts` turns them into crds/custody.dev_agenttasks.yaml
 * (via ./openapi.ts), and `parseAgentTaskSpec` / `parseAgentTask` use them to
 * validate at runtime with the same rules plus the exact core parsers.
 *
 * Rules that the OpenAPI subset cannot state (ttl range, "namespace only for
 * ServiceAccount", ...) are CEL rules in the CRD and zod refinements here.
 */
import { z } from "zod";
import { DEFAULT_TTL, parseTtl, TTL_PATTERN } from "../duration.ts";
import { ValidationError } from "../errors.ts";
import { audienceFileName, collidingAudiences } from "../jwt/audience-files.ts";
import { GRANT_PATTERN, MAX_GRANT_LENGTH, MAX_SCOPE_GRANTS, parseGrant } from "../scope.ts";
import { MAX_DNS_LABEL_LENGTH, validateDnsLabel } from "../spiffe.ts";
import { type CelValidation, type CustomResourceDescription, celString, kube, withCel } from "./openapi.ts";

export const GROUP = "custody.dev";
export const VERSION = "v1alpha1";
export const API_VERSION = `${GROUP}/${VERSION}`;
export const KIND = "AgentTask";
export const PLURAL = "agenttasks";
export const SINGULAR = "agenttask";

export const DNS_LABEL_PATTERN = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
export const DNS_SUBDOMAIN_PATTERN = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
export const MAX_DNS_SUBDOMAIN_LENGTH = 253;
/** Model, tool and version identifiers: printable, no spaces, start with a letter or digit. */
export const IDENTIFIER_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$";
export const MAX_IDENTIFIER_LENGTH = 128;
export const MAX_TOOLS = 64;
export const MAX_LABELS = 32;
export const MAX_LABEL_KEY_LENGTH = 63;
export const MAX_LABEL_VALUE_LENGTH = 256;
export const LABEL_KEY_PATTERN = "^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";
export const MAX_AUDIENCES = 16;
export const MAX_AUDIENCE_LENGTH = 256;
/** Audiences are URIs or opaque names: printable ASCII without spaces. */
export const AUDIENCE_PATTERN = "^[!-~]+$";
export const MAX_TTL_LENGTH = 64;
export const MAX_TIMESTAMP_LENGTH = 64;
export const MAX_REASON_LENGTH = 256;
/** User and group names from authentication (OIDC subjects, e-mails, `system:...`). */
export const MAX_PRINCIPAL_NAME_LENGTH = 512;
export const MAX_GROUPS = 256;
export const MAX_UID_LENGTH = 128;
export const MAX_CHAIN_LENGTH = 32;
export const MAX_SPIFFE_ID_LENGTH = 2048;
export const MAX_CONDITIONS = 16;

export const DELEGATOR_KINDS = ["User", "Group", "ServiceAccount", "Workflow"] as const;
export type DelegatorKind = (typeof DELEGATOR_KINDS)[number];

export const PHASES = ["Pending", "Issued", "Denied", "Expired", "Revoked", "Failed"] as const;
export type Phase = (typeof PHASES)[number];

// ---------------------------------------------------------------- helpers

/**
 * Runs an exact core validator as a refinement. It is added before the
 * schema's own length/pattern checks so that its message (which names the
 * precise rule, e.g. `dot-segment`) is the first issue for the field.
 * `label` is the placeholder field name given to the core validator; the
 * caller replaces it with the full path (see `issueToError`).
 */
export function coreRefinement(label: string, validate: (value: string, field: string) => unknown) {
  return (value: string, ctx: z.RefinementCtx<string>) => {
    try {
      validate(value, label);
    } catch (e) {
      if (!(e instanceof ValidationError)) throw e;
      ctx.addIssue({ code: "custom", message: e.message, params: { rule: e.rule, label } });
    }
  };
}

function dnsLabel(description: string) {
  return z
    .string()
    .superRefine(coreRefinement("name", validateDnsLabel))
    .max(MAX_DNS_LABEL_LENGTH)
    .regex(new RegExp(DNS_LABEL_PATTERN))
    .describe(description);
}

function dnsSubdomain(description: string) {
  return z
    .string()
    .max(MAX_DNS_SUBDOMAIN_LENGTH)
    .regex(new RegExp(DNS_SUBDOMAIN_PATTERN), {
      error: "must be a DNS subdomain (lowercase letters, digits, '-' and '.')",
    })
    .describe(description);
}

function identifier(description: string) {
  return z
    .string()
    .min(1)
    .max(MAX_IDENTIFIER_LENGTH)
    .regex(new RegExp(IDENTIFIER_PATTERN))
    .describe(description);
}

function timestamp(description: string) {
  return z.iso
    .datetime({ offset: true, error: "must be an RFC 3339 date-time such as 2030-01-01T00:00:00Z" })
    .max(MAX_TIMESTAMP_LENGTH)
    .describe(description);
}

// ---------------------------------------------------------------- spec

export const AgentModelSchema = z
  .object({
    provider: identifier("Who serves the model, e.g. anthropic, openai, self-hosted."),
    name: identifier("Model name as the provider spells it, e.g. claude-sonnet-4-5."),
    version: identifier("Model version or snapshot date as the provider spells it."),
  })
  .describe("The model the agent runs on. Recorded in provenance; not used for authorization.");

export const AgentToolSchema = z
  .object({
    name: identifier("Tool name, unique within the agent."),
    version: identifier("Tool version."),
  })
  .describe("A tool the agent may call.");

const toolList = kube(z.array(AgentToolSchema).max(MAX_TOOLS), {
  // A list map keyed by name: the apiserver itself refuses two tools with one name.
  "x-kubernetes-list-type": "map",
  "x-kubernetes-list-map-keys": ["name"],
}).superRefine((tools, ctx) => {
  const seen = new Map<string, number>();
  tools.forEach((tool, i) => {
    const first = seen.get(tool.name);
    if (first !== undefined) {
      ctx.addIssue({
        code: "custom",
        path: [i, "name"],
        message: `tool ${JSON.stringify(tool.name)} duplicates tools[${first}]`,
        params: { rule: "duplicate" },
      });
    } else {
      seen.set(tool.name, i);
    }
  });
});

const labelMap = kube(
  z
    .record(
      z.string().min(1).max(MAX_LABEL_KEY_LENGTH).regex(new RegExp(LABEL_KEY_PATTERN)),
      z.string().max(MAX_LABEL_VALUE_LENGTH),
    )
    .superRefine((labels, ctx) => {
      const count = Object.keys(labels).length;
      if (count > MAX_LABELS) {
        ctx.addIssue({
          code: "custom",
          message: `has ${count} labels, more than ${MAX_LABELS}`,
          params: { rule: "max-properties" },
        });
      }
    }),
  { maxProperties: MAX_LABELS },
);

export const AgentSchema = withCel(
  z.object({
    name: dnsLabel("Agent name, a DNS label. Becomes the agent segment of the SPIFFE ID."),
    model: AgentModelSchema.optional(),
    tools: toolList.optional().describe(`Tools the agent may call, unique by name, at most ${MAX_TOOLS}.`),
    labels: labelMap
      .optional()
      .describe(
        `Free-form descriptive labels (at most ${MAX_LABELS}; keys ${LABEL_KEY_PATTERN}, ` +
          `at most ${MAX_LABEL_KEY_LENGTH} characters; values at most ${MAX_LABEL_VALUE_LENGTH}).`,
      ),
    sensitiveLabels: kube(z.array(z.string().min(1).max(MAX_LABEL_KEY_LENGTH)).max(MAX_LABELS), {
      "x-kubernetes-list-type": "set",
    })
      .optional()
      .describe(
        "Keys of labels whose values are sensitive: provenance events carry them only as salted " +
          "HMAC-SHA-256 digests (sensitive.digests), never in clear.",
      ),
  }),
  [
    {
      name: "sensitive-label-exists",
      rule: "!has(self.sensitiveLabels) || self.sensitiveLabels.all(k, has(self.labels) && k in self.labels)",
      message: "every key in sensitiveLabels must be a key of labels",
      fieldPath: ".sensitiveLabels",
      holds: (a) => (a.sensitiveLabels ?? []).every((k) => a.labels !== undefined && k in a.labels),
    },
  ],
).describe("The agent that will act under this task's identity.");

export const DelegatorSchema = withCel(
  z.object({
    kind: z.enum(DELEGATOR_KINDS).describe("What kind of principal delegates."),
    name: z
      .string()
      .min(1)
      .max(MAX_PRINCIPAL_NAME_LENGTH)
      .describe("Principal name: user name, group name, service account name or workflow name."),
    namespace: z
      .string()
      .max(MAX_DNS_LABEL_LENGTH)
      .regex(new RegExp(DNS_LABEL_PATTERN))
      .optional()
      .describe("Namespace of a ServiceAccount delegator; only for kind ServiceAccount."),
  }),
  [
    {
      name: "namespace-only-for-service-account",
      rule: "!has(self.namespace) || self.kind == 'ServiceAccount'",
      message: "namespace may be set only when kind is ServiceAccount",
      fieldPath: ".namespace",
      holds: (d) => d.namespace === undefined || d.kind === "ServiceAccount",
    },
    {
      name: "service-account-namespace",
      rule: "self.kind != 'ServiceAccount' || has(self.namespace)",
      message: "namespace is required when kind is ServiceAccount",
      fieldPath: ".namespace",
      holds: (d) => d.kind !== "ServiceAccount" || d.namespace !== undefined,
    },
    {
      name: "user-not-service-account",
      rule: "self.kind != 'User' || !self.name.startsWith('system:serviceaccount:')",
      message:
        "a service account delegates as kind ServiceAccount with its namespace, not as a User named system:serviceaccount:…",
      fieldPath: ".name",
      holds: (d) => d.kind !== "User" || !d.name.startsWith("system:serviceaccount:"),
    },
    {
      name: "service-account-name",
      rule:
        `self.kind != 'ServiceAccount' || (self.name.size() <= ${MAX_DNS_SUBDOMAIN_LENGTH} && ` +
        `self.name.matches(${celString(DNS_SUBDOMAIN_PATTERN)}))`,
      message: `a ServiceAccount name must be a DNS subdomain of at most ${MAX_DNS_SUBDOMAIN_LENGTH} characters`,
      fieldPath: ".name",
      holds: (d) =>
        d.kind !== "ServiceAccount" ||
        (d.name.length <= MAX_DNS_SUBDOMAIN_LENGTH && new RegExp(DNS_SUBDOMAIN_PATTERN).test(d.name)),
    },
  ],
).describe(
  "Who delegates authority to the agent. When absent, the delegator is the requester that " +
    "created the task, as proven at admission.",
);

export const ParentRefSchema = z
  .object({
    name: dnsLabel("Name of the parent AgentTask in the same namespace."),
  })
  .describe("The AgentTask this task was delegated from; its scope must be a subset of the parent's.");

const grant = z
  .string()
  .superRefine(coreRefinement("grant", parseGrant))
  .max(MAX_GRANT_LENGTH)
  .regex(new RegExp(GRANT_PATTERN));

const scopeList = kube(
  z
    .array(grant)
    .min(1)
    .max(MAX_SCOPE_GRANTS)
    .superRefine((grants, ctx) => {
      const seen = new Map<string, number>();
      grants.forEach((g, i) => {
        const first = seen.get(g);
        if (first !== undefined) {
          ctx.addIssue({
            code: "custom",
            path: [i],
            message: `grant ${JSON.stringify(g)} duplicates scope[${first}]`,
            params: { rule: "duplicate" },
          });
        } else {
          seen.set(g, i);
        }
      });
    }),
  { "x-kubernetes-list-type": "set" },
).describe(
  `What the agent may do: 1..${MAX_SCOPE_GRANTS} distinct grants <verb>:<resource>, e.g. ` +
    `read:repos/acme/*. verb is * or [a-z][a-z0-9-]{0,31}; resource is *, or /-separated ` +
    `segments of [A-Za-z0-9._~-] optionally ending in /*. At most ${MAX_GRANT_LENGTH} characters each.`,
);

const ttlRangeRule: CelValidation = {
  // A malformed value is reported by `pattern` alone; duration() runs only on
  // well-formed text.
  rule: `!self.matches(${celString(TTL_PATTERN)}) || (duration(self) >= duration('5m') && duration(self) <= duration('24h'))`,
  message: "ttl must be between 5m and 24h",
};

const ttl = kube(
  z.string().superRefine(coreRefinement("ttl", parseTtl)).max(MAX_TTL_LENGTH).regex(new RegExp(TTL_PATTERN)),
  { "x-kubernetes-validations": [ttlRangeRule] },
)
  .default(DEFAULT_TTL)
  .describe(
    `Lifetime of each issued certificate: hours, minutes, seconds in that order (1h, 90m, 1h30m15s), ` +
      `between 5m and 24h. Default ${DEFAULT_TTL}.`,
  );

/**
 * Identity-defining fields are immutable (a change needs a new task), and a
 * revocation cannot be undone. Transition rules: the API server checks them
 * on UPDATE only, against the stored object (oldSelf).
 */
const SPEC_TRANSITION_RULES: readonly CelValidation[] = [
  {
    rule: "self.agent == oldSelf.agent",
    message: "spec.agent is immutable: it defines the identity; create a new AgentTask instead",
    fieldPath: ".agent",
  },
  {
    rule: "self.scope == oldSelf.scope",
    message: "spec.scope is immutable: it defines the identity; create a new AgentTask instead",
    fieldPath: ".scope",
  },
  {
    rule: "self.serviceAccountName == oldSelf.serviceAccountName",
    message: "spec.serviceAccountName is immutable: it defines the identity; create a new AgentTask instead",
    fieldPath: ".serviceAccountName",
  },
  {
    rule: "self.ttl == oldSelf.ttl",
    message: "spec.ttl is immutable: it defines the identity; create a new AgentTask instead",
    fieldPath: ".ttl",
  },
  {
    rule: "has(self.delegator) == has(oldSelf.delegator) && (!has(self.delegator) || self.delegator == oldSelf.delegator)",
    message: "spec.delegator is immutable: it defines the identity; create a new AgentTask instead",
    fieldPath: ".delegator",
  },
  {
    rule: "has(self.parentRef) == has(oldSelf.parentRef) && (!has(self.parentRef) || self.parentRef == oldSelf.parentRef)",
    message: "spec.parentRef is immutable: it defines the identity; create a new AgentTask instead",
    fieldPath: ".parentRef",
  },
  {
    rule: "has(self.deadline) == has(oldSelf.deadline) && (!has(self.deadline) || self.deadline == oldSelf.deadline)",
    message: "spec.deadline is immutable: it defines the identity; create a new AgentTask instead",
    fieldPath: ".deadline",
  },
  {
    rule: "has(self.audiences) == has(oldSelf.audiences) && (!has(self.audiences) || self.audiences == oldSelf.audiences)",
    message: "spec.audiences is immutable: it defines the identity; create a new AgentTask instead",
    fieldPath: ".audiences",
  },
  {
    rule: "!has(oldSelf.revoked) || !oldSelf.revoked || (has(self.revoked) && self.revoked)",
    message: "spec.revoked cannot be undone: a revoked task stays revoked",
    fieldPath: ".revoked",
  },
];

export const AgentTaskSpecSchema = kube(
  withCel(
    z.object({
      agent: AgentSchema,
      delegator: DelegatorSchema.optional(),
      parentRef: ParentRefSchema.optional(),
      scope: scopeList,
      audiences: kube(
        z
          .array(z.string().max(MAX_AUDIENCE_LENGTH).regex(new RegExp(AUDIENCE_PATTERN)))
          .max(MAX_AUDIENCES)
          .superRefine((list, ctx) => {
            // Each audience's token is a file of the credential volume.
            for (const i of collidingAudiences(list)) {
              ctx.addIssue({
                code: "custom",
                path: [i],
                message:
                  `audience ${JSON.stringify(list[i])} would be written to the same file as another audience ` +
                  `(${audienceFileName(list[i]!)}) or the token-exchange token (rule audience-file-names)`,
                params: { rule: "audience-file-names" },
              });
            }
          }),
        { "x-kubernetes-list-type": "set" },
      )
        .optional()
        .describe(`Audiences the agent's credentials are meant for (at most ${MAX_AUDIENCES}).`),
      ttl,
      deadline: timestamp(
        "RFC 3339 time after which the task is over: no certificate is issued or renewed past it.",
      ).optional(),
      serviceAccountName: dnsSubdomain(
        "The ServiceAccount whose pods may mount this task's credentials (a DNS subdomain).",
      ),
      revoked: z
        .boolean()
        .optional()
        .describe("Set to true to revoke the task and every task delegated from it."),
      revocationReason: z
        .string()
        .max(MAX_REASON_LENGTH)
        .optional()
        .describe("Why the task was revoked; only with revoked: true."),
    }),
    [
      {
        name: "reason-only-when-revoked",
        rule: "!has(self.revocationReason) || (has(self.revoked) && self.revoked)",
        message: "revocationReason may be set only when revoked is true",
        fieldPath: ".revocationReason",
        holds: (spec) => spec.revocationReason === undefined || spec.revoked === true,
      },
    ],
  ),
  {
    "x-kubernetes-validations": SPEC_TRANSITION_RULES,
  },
).describe("What the agent may do, for whom, and for how long.");

// ---------------------------------------------------------------- status

export const StatusDelegatorSchema = z
  .object({
    kind: z.enum(DELEGATOR_KINDS).describe("Kind of the effective delegator."),
    name: z.string().min(1).max(MAX_PRINCIPAL_NAME_LENGTH).describe("Name of the effective delegator."),
    uid: z
      .string()
      .max(MAX_UID_LENGTH)
      .optional()
      .describe("UID of the delegator, when authentication gave one."),
    groups: kube(z.array(z.string().max(MAX_PRINCIPAL_NAME_LENGTH)).max(MAX_GROUPS), {
      "x-kubernetes-list-type": "atomic",
    })
      .optional()
      .describe("Groups of a User delegator at admission."),
  })
  .describe("The delegator the operator verified (from spec.delegator or the admission record).");

export const ChainLinkSchema = z
  .object({
    kind: z.enum([...DELEGATOR_KINDS, "AgentTask"]).describe("Principal kind; AgentTask for a parent task."),
    name: z.string().min(1).max(MAX_PRINCIPAL_NAME_LENGTH).describe("Principal or task name."),
    uid: z.string().max(MAX_UID_LENGTH).describe("UID of the principal or task."),
    scope: kube(z.array(z.string().max(MAX_GRANT_LENGTH)).max(MAX_SCOPE_GRANTS), {
      "x-kubernetes-list-type": "atomic",
    }).describe("Scope held at this link."),
  })
  .describe("One link of the delegation chain.");

export const CertificateStatusSchema = z
  .object({
    serial: z
      .string()
      .max(40)
      .regex(/^[0-9a-f]+$/)
      .describe("Serial number, lowercase hex."),
    notBefore: timestamp("Start of validity."),
    notAfter: timestamp("End of validity."),
    renewalTime: timestamp("When the operator will renew the certificate."),
    publicKeySHA256: z
      .string()
      .max(64)
      .regex(/^[0-9a-f]{64}$/)
      .describe("SHA-256 of the SubjectPublicKeyInfo, lowercase hex."),
    secretName: dnsSubdomain("Secret holding the certificate and key."),
    previousSerial: z
      .string()
      .max(40)
      .regex(/^[0-9a-f]+$/)
      .optional()
      .describe(
        "Serial of the certificate this one renewed: copies of it stay valid until previousNotAfter, " +
          "so a revocation lists it too.",
      ),
    previousNotAfter: timestamp("End of validity of the previous certificate.").optional(),
    previousSuperseded: z
      .boolean()
      .optional()
      .describe(
        "The previous certificate was replaced because a policy narrowed the task: it no longer counts as the " +
          "task's (token exchange, decisions), and a revocation still lists it until previousNotAfter.",
      ),
  })
  .describe("The current certificate.");

export const ConditionSchema = z
  .object({
    type: z
      .string()
      .max(316)
      .regex(
        /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/,
      )
      .describe("Condition type in CamelCase, e.g. Ready."),
    status: z.enum(["True", "False", "Unknown"]).describe("Status of the condition."),
    observedGeneration: z
      .int()
      .min(0)
      .optional()
      .describe("The .metadata.generation the condition was set from."),
    lastTransitionTime: timestamp("Last time the condition changed status."),
    reason: z
      .string()
      .min(1)
      .max(1024)
      .regex(/^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$/)
      .describe("Machine-readable CamelCase reason for the last transition."),
    message: z.string().max(32768).describe("Human-readable detail."),
  })
  .describe("A metav1.Condition.");

export const AgentTaskStatusSchema = z
  .object({
    phase: z.enum(PHASES).optional().describe("Where the task is in its lifecycle."),
    spiffeID: z.string().max(MAX_SPIFFE_ID_LENGTH).optional().describe("SPIFFE ID of the issued identity."),
    delegator: StatusDelegatorSchema.optional(),
    delegationChain: kube(z.array(ChainLinkSchema).max(MAX_CHAIN_LENGTH), {
      "x-kubernetes-list-type": "atomic",
    })
      .optional()
      .describe("The delegation chain, root first, ending with this task."),
    certificate: CertificateStatusSchema.optional(),
    policyVersion: z
      .string()
      .max(MAX_IDENTIFIER_LENGTH)
      .optional()
      .describe("Digest of the policies in force when the credential was decided (sha256:…), or none."),
    policies: kube(
      z
        .array(
          z
            .object({
              kind: z.enum(["AgentPolicy", "ClusterAgentPolicy"]).describe("Policy kind."),
              namespace: z.string().max(63).optional().describe("Namespace of an AgentPolicy."),
              name: z.string().min(1).max(253).describe("Policy name."),
              version: z.string().max(80).describe("sha256:<hex> of its content."),
            })
            .describe("One policy in force."),
        )
        .max(64),
      { "x-kubernetes-list-type": "atomic" },
    )
      .optional()
      .describe("The policies in force at the last decision."),
    grantedScope: kube(z.array(z.string().max(MAX_GRANT_LENGTH)).max(MAX_SCOPE_GRANTS), {
      "x-kubernetes-list-type": "atomic",
    })
      .optional()
      .describe("The scope the certificate carries: spec.scope less what policy dropped."),
    grantedTtl: z
      .string()
      .max(MAX_TTL_LENGTH)
      .optional()
      .describe("The lifetime policy allowed the certificate: spec.ttl or a policy's shorter maxTtl."),
    observedGeneration: z.int().min(0).optional().describe("The .metadata.generation the status reflects."),
    conditions: kube(z.array(ConditionSchema).max(MAX_CONDITIONS), {
      "x-kubernetes-list-type": "map",
      "x-kubernetes-list-map-keys": ["type"],
    })
      .optional()
      .describe("Observations of the task's state."),
  })
  .describe("Observed state, written by the operator.");

// ---------------------------------------------------------------- types

/** A spec after parsing: defaults applied (ttl is always present). */
export type AgentTaskSpec = z.output<typeof AgentTaskSpecSchema>;
/** A spec as written by a user: ttl optional. */
export type AgentTaskSpecInput = z.input<typeof AgentTaskSpecSchema>;
export type AgentTaskStatus = z.output<typeof AgentTaskStatusSchema>;
export type Agent = z.output<typeof AgentSchema>;
export type Delegator = z.output<typeof DelegatorSchema>;
export type StatusDelegator = z.output<typeof StatusDelegatorSchema>;
export type ChainLink = z.output<typeof ChainLinkSchema>;
export type CertificateStatus = z.output<typeof CertificateStatusSchema>;
export type Condition = z.output<typeof ConditionSchema>;

/** The object metadata Custody reads; the apiserver owns the rest. */
export interface AgentTaskMetadata {
  name: string;
  namespace?: string;
  uid?: string;
  generation?: number;
  resourceVersion?: string;
  creationTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

export interface AgentTask {
  apiVersion: typeof API_VERSION;
  kind: typeof KIND;
  metadata: AgentTaskMetadata;
  spec: AgentTaskSpec;
  status?: AgentTaskStatus;
}

// ---------------------------------------------------------------- CRD

/** Root-level CEL: the task name becomes a SPIFFE ID segment, so it must be a DNS label. */
export const ROOT_VALIDATIONS: readonly CelValidation[] = [
  {
    rule: `self.metadata.name.size() <= ${MAX_DNS_LABEL_LENGTH}`,
    message: `metadata.name must be at most ${MAX_DNS_LABEL_LENGTH} characters`,
  },
  {
    // Guarded by size so the regex never runs on an overlong name.
    rule: `self.metadata.name.size() > ${MAX_DNS_LABEL_LENGTH} || self.metadata.name.matches(${celString(DNS_LABEL_PATTERN)})`,
    message:
      "metadata.name must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit",
  },
];

export const AGENT_TASK_CRD: CustomResourceDescription = {
  group: GROUP,
  version: VERSION,
  kind: KIND,
  plural: PLURAL,
  singular: SINGULAR,
  shortNames: ["at"],
  categories: ["custody"],
  scope: "Namespaced",
  description:
    "AgentTask asks Custody for a short-lived SPIFFE X.509-SVID for an AI agent, bound to who " +
    "delegated the work and to what the agent may do.",
  spec: AgentTaskSpecSchema,
  status: AgentTaskStatusSchema,
  rootValidations: ROOT_VALIDATIONS,
  printerColumns: [
    { name: "Phase", type: "string", jsonPath: ".status.phase" },
    { name: "Delegator", type: "string", jsonPath: ".status.delegator.name" },
    { name: "SPIFFE-ID", type: "string", jsonPath: ".status.spiffeID" },
    { name: "Expires", type: "string", jsonPath: ".status.certificate.notAfter" },
    { name: "Age", type: "date", jsonPath: ".metadata.creationTimestamp" },
    { name: "Scope", type: "string", jsonPath: ".spec.scope", priority: 1 },
    { name: "Parent", type: "string", jsonPath: ".spec.parentRef.name", priority: 1 },
  ],
};

// ---------------------------------------------------------------- parsing

/** `spec.scope[2]`, `spec.agent.labels["team/x"]`. */
export function formatFieldPath(root: string, path: readonly PropertyKey[]): string {
  let out = root;
  for (const segment of path) {
    if (typeof segment === "number") out += `[${segment}]`;
    else if (typeof segment === "string" && /^[A-Za-z_][A-Za-z0-9_]*$/.test(segment)) out += `.${segment}`;
    else out += `[${JSON.stringify(String(segment))}]`;
  }
  return out;
}

function ruleOf(issue: z.core.$ZodIssue, input: unknown): string {
  switch (issue.code) {
    case "custom":
      return typeof issue.params?.rule === "string" ? issue.params.rule : "custom";
    case "invalid_type":
      return valueAt(input, issue.path) === undefined ? "required" : "type";
    case "too_big":
      return issue.origin === "string" ? "max-length" : issue.origin === "array" ? "max-items" : "maximum";
    case "too_small":
      return issue.origin === "string" ? "min-length" : issue.origin === "array" ? "min-items" : "minimum";
    case "invalid_format":
      return issue.format === "regex" ? "pattern" : issue.format === "datetime" ? "date-time" : issue.format;
    case "invalid_value":
      return "enum";
    default:
      return issue.code;
  }
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let current = input;
  for (const key of path) {
    if (current === null || typeof current !== "object") return undefined;
    current = (current as Record<PropertyKey, unknown>)[key];
  }
  return current;
}

function lowerFirst(s: string): string {
  return s.charAt(0).toLowerCase() + s.slice(1);
}

/** Turns the first zod issue into a ValidationError naming the full field path and the rule. */
function issueToError(issue: z.core.$ZodIssue, root: string, input: unknown): ValidationError {
  const field = formatFieldPath(root, issue.path);
  // A bad map key: report the key's own check (pattern, length) at the key's path.
  if (issue.code === "invalid_key" && issue.issues[0] !== undefined) {
    const inner = issue.issues[0];
    const rule = ruleOf(inner, undefined);
    return new ValidationError(field, rule, `${field}: key ${lowerFirst(inner.message)} (rule ${rule})`);
  }
  const rule = ruleOf(issue, input);
  const label = issue.code === "custom" ? issue.params?.label : undefined;
  // Core validators already format "<label>: <detail> (rule r)"; swap in the real field.
  if (typeof label === "string" && issue.message.startsWith(`${label}: `)) {
    return new ValidationError(field, rule, `${field}: ${issue.message.slice(label.length + 2)}`);
  }
  const message =
    rule === "required" ? "is required" : lowerFirst(issue.message.replace(/^Invalid input: /, ""));
  return new ValidationError(field, rule, `${field}: ${message} (rule ${rule})`);
}

/**
 * Validates an AgentTask spec and applies defaults. Throws a ValidationError
 * whose field is a path such as `spec.scope[2]` and whose rule names the check.
 */
export function parseAgentTaskSpec(obj: unknown): AgentTaskSpec {
  const result = AgentTaskSpecSchema.safeParse(obj);
  if (result.success) return result.data;
  throw issueToError(result.error.issues[0]!, "spec", obj);
}

/** Validates an AgentTask's identity fields and spec; status is checked when present. */
export function parseAgentTask(obj: unknown): AgentTask {
  if (obj === null || typeof obj !== "object") {
    throw new ValidationError("AgentTask", "type", "AgentTask: must be an object (rule type)");
  }
  const o = obj as Record<string, unknown>;
  if (o.apiVersion !== API_VERSION) {
    throw new ValidationError(
      "apiVersion",
      "api-version",
      `apiVersion: must be ${API_VERSION} (rule api-version)`,
    );
  }
  if (o.kind !== KIND) throw new ValidationError("kind", "kind", `kind: must be ${KIND} (rule kind)`);
  const metadata = o.metadata as Record<string, unknown> | undefined;
  if (metadata === null || typeof metadata !== "object") {
    throw new ValidationError("metadata", "required", "metadata: is required (rule required)");
  }
  validateDnsLabel(metadata.name, "metadata.name");
  const spec = parseAgentTaskSpec(o.spec);
  let status: AgentTaskStatus | undefined;
  if (o.status !== undefined) {
    const result = AgentTaskStatusSchema.safeParse(o.status);
    if (!result.success) throw issueToError(result.error.issues[0]!, "status", o.status);
    status = result.data;
  }
  return {
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: metadata as unknown as AgentTaskMetadata,
    spec,
    ...(status !== undefined ? { status } : {}),
  };
}
