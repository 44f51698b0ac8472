/**
 * An input failed validation. `field` names where (e.g. `spec.scope[3]`),
 * `rule` names which rule it broke, so callers can report both to a user.
 */
export class ValidationError extends Error {
  readonly field: string;
  readonly rule: string;

  constructor(field: string, rule: string, message?: string) {
    super(message ?? `${field}: ${rule}`);
    this.name = "ValidationError";
    this.field = field;
    this.rule = rule;
  }
}
