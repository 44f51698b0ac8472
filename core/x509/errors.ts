/**
 * One error type for everything in core/x509: `field` names the part of the
 * input (or of the certificate) that broke a rule, so callers can report it.
 */
export class X509Error extends Error {
  readonly field: string;
  constructor(field: string, rule: string) {
    super(`${field}: ${rule}`);
    this.name = "X509Error";
    this.field = field;
  }
}
