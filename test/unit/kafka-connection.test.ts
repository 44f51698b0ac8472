// TLS and SASL settings for Kafka, as the chart renders them: every bad
// combination is refused naming the variable, never echoing the password.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { kafkaConnectionFromEnv } from "../../shells/kafka/connection.ts";

const dir = mkdtempSync(join(tmpdir(), "custody-kafka-"));
const caFile = join(dir, "ca.crt");
writeFileSync(caFile, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");

describe("kafkaConnectionFromEnv", () => {
  it("is plaintext without settings", () => {
    expect(kafkaConnectionFromEnv({})).toEqual({});
  });

  it("maps TLS (system trust or a CA file) and SASL to kafkajs options", () => {
    expect(kafkaConnectionFromEnv({ CUSTODY_KAFKA_TLS: "true" })).toEqual({ ssl: true });
    const full = kafkaConnectionFromEnv({
      CUSTODY_KAFKA_TLS: "true",
      CUSTODY_KAFKA_TLS_CA_FILE: caFile,
      CUSTODY_KAFKA_SASL_MECHANISM: "scram-sha-512",
      CUSTODY_KAFKA_SASL_USERNAME: "custody",
      CUSTODY_KAFKA_SASL_PASSWORD: "s3cret-value",
    });
    expect(full.ssl).toEqual({ ca: [expect.stringContaining("BEGIN CERTIFICATE")] });
    expect(full.sasl).toEqual({ mechanism: "scram-sha-512", username: "custody", password: "s3cret-value" });
  });

  it.each([
    [{ CUSTODY_KAFKA_TLS: "yes" }, "CUSTODY_KAFKA_TLS"],
    [
      { CUSTODY_KAFKA_TLS_CA_FILE: caFile },
      "CUSTODY_KAFKA_TLS_CA_FILE: is set but CUSTODY_KAFKA_TLS is not true",
    ],
    [{ CUSTODY_KAFKA_TLS: "true", CUSTODY_KAFKA_TLS_CA_FILE: join(dir, "missing") }, "cannot be read"],
    [{ CUSTODY_KAFKA_TLS: "true", CUSTODY_KAFKA_SASL_MECHANISM: "gssapi" }, "must be one of"],
    [
      { CUSTODY_KAFKA_TLS: "true", CUSTODY_KAFKA_SASL_MECHANISM: "plain", CUSTODY_KAFKA_SASL_PASSWORD: "p" },
      "CUSTODY_KAFKA_SASL_USERNAME",
    ],
    [
      {
        CUSTODY_KAFKA_SASL_MECHANISM: "plain",
        CUSTODY_KAFKA_SASL_USERNAME: "u",
        CUSTODY_KAFKA_SASL_PASSWORD: "s3cret-value",
      },
      "requires CUSTODY_KAFKA_TLS=true",
    ],
  ])("refuses %o naming the variable", (env, message) => {
    let error = "";
    try {
      kafkaConnectionFromEnv(env as NodeJS.ProcessEnv);
    } catch (err) {
      error = (err as Error).message;
    }
    expect(error).toContain(message);
    expect(error).not.toContain("s3cret-value");
  });
});
