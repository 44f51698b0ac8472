// How Custody reaches Kafka beyond the broker list: TLS (with an optional
// CA file) and SASL (PLAIN or SCRAM). Read from the environment the chart
// sets (CUSTODY_KAFKA_TLS, _TLS_CA_FILE, _SASL_MECHANISM, _SASL_USERNAME,
// _SASL_PASSWORD), shared by the operator and the CLI. Bad values fail at
// start with the variable named; the password is never part of a message.
import { readFileSync } from "node:fs";
import type { SASLOptions } from "kafkajs";

export interface KafkaConnection {
  ssl?: true | { ca: string[] };
  sasl?: SASLOptions;
}

const MECHANISMS = ["plain", "scram-sha-256", "scram-sha-512"] as const;

export function kafkaConnectionFromEnv(env: NodeJS.ProcessEnv = process.env): KafkaConnection {
  const fail = (name: string, rule: string): never => {
    throw new Error(`invalid Kafka configuration:\n  ${name}: ${rule}`);
  };
  const out: KafkaConnection = {};
  const tls = env.CUSTODY_KAFKA_TLS ?? "false";
  if (tls !== "true" && tls !== "false") fail("CUSTODY_KAFKA_TLS", 'must be "true" or "false"');
  const caFile = env.CUSTODY_KAFKA_TLS_CA_FILE;
  if (caFile && tls !== "true") fail("CUSTODY_KAFKA_TLS_CA_FILE", "is set but CUSTODY_KAFKA_TLS is not true");
  if (tls === "true") {
    if (caFile) {
      let pem = "";
      try {
        pem = readFileSync(caFile, "utf8");
      } catch (err) {
        fail(
          "CUSTODY_KAFKA_TLS_CA_FILE",
          `cannot be read (${(err as NodeJS.ErrnoException).code ?? "error"})`,
        );
      }
      if (!pem.includes("-----BEGIN CERTIFICATE-----"))
        fail("CUSTODY_KAFKA_TLS_CA_FILE", "holds no PEM certificate");
      out.ssl = { ca: [pem] };
    } else {
      out.ssl = true; // the system's trust store
    }
  }
  const mechanism = env.CUSTODY_KAFKA_SASL_MECHANISM;
  if (mechanism) {
    if (!(MECHANISMS as readonly string[]).includes(mechanism))
      fail("CUSTODY_KAFKA_SASL_MECHANISM", `must be one of ${MECHANISMS.join(", ")}`);
    const username = env.CUSTODY_KAFKA_SASL_USERNAME;
    const password = env.CUSTODY_KAFKA_SASL_PASSWORD;
    if (!username) fail("CUSTODY_KAFKA_SASL_USERNAME", "is required with CUSTODY_KAFKA_SASL_MECHANISM");
    if (!password) fail("CUSTODY_KAFKA_SASL_PASSWORD", "is required with CUSTODY_KAFKA_SASL_MECHANISM");
    // SASL over plaintext would send the password in clear (PLAIN) to anyone on the path.
    if (tls !== "true") fail("CUSTODY_KAFKA_SASL_MECHANISM", "requires CUSTODY_KAFKA_TLS=true");
    out.sasl = { mechanism, username, password } as SASLOptions;
  }
  return out;
}
