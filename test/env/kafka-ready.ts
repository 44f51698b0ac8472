// Exits 0 once the broker answers a metadata request (what every Custody
// producer and consumer needs first); used by up.sh as Kafka's readiness check.
import { Kafka, logLevel } from "kafkajs";

const brokers = (process.argv[2] ?? process.env.CUSTODY_KAFKA_BROKERS ?? "").split(",").filter(Boolean);
if (brokers.length === 0) {
  console.error("usage: kafka-ready.ts host:port[,host:port]");
  process.exit(2);
}
const admin = new Kafka({
  clientId: "custody-env-ready",
  brokers,
  logLevel: logLevel.NOTHING,
  connectionTimeout: 1000,
  retry: { retries: 0 },
}).admin();
try {
  await admin.connect();
  const cluster = await admin.describeCluster();
  if (cluster.brokers.length === 0) throw new Error("no brokers in metadata");
  await admin.disconnect();
  process.exit(0);
} catch {
  process.exit(1);
}
