// Admission of AgentPolicy and ClusterAgentPolicy: every expression must
// parse, type-check against the documented context and stay within the
// static bounds, so that a policy the API server stores can always be
// evaluated. A refusal names the field, the line:column and the rule.

import { ValidationError } from "../core/errors.ts";
import { compilePolicy } from "../core/policy/compile.ts";
import { type AdmissionHandler, allow, deny } from "./admission.ts";

export function createAgentPolicyAdmission(): AdmissionHandler {
  return async (request) => {
    if (request.operation !== "CREATE" && request.operation !== "UPDATE") return allow();
    const object = request.object as
      | { kind?: string; metadata?: { name?: string; namespace?: string }; spec?: unknown }
      | undefined;
    const kind = object?.kind === "ClusterAgentPolicy" ? "ClusterAgentPolicy" : "AgentPolicy";
    try {
      compilePolicy(
        {
          kind,
          metadata: {
            name: object?.metadata?.name ?? request.name ?? "",
            ...(request.namespace ? { namespace: request.namespace } : {}),
          },
          spec: object?.spec as never,
        },
        // Admission only checks: warming the expressions up is the operator's business.
        { warm: false },
      );
      return allow();
    } catch (err) {
      if (err instanceof ValidationError) return deny(422, err.message);
      throw err;
    }
  };
}
