export * from "./ca.ts";
export * from "./delegation-extension.ts";
export * from "./errors.ts";
export * from "./mint.ts";
export { CUSTODY_UUID_ARC, CUSTODY_X509_ARC, DELEGATION_EXTENSION_OID } from "./oids.ts";
export * from "./pem.ts";
export * from "./serial.ts";
export * from "./spiffe-id.ts";
export * from "./verify.ts";
