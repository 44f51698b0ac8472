// Certificates that Custody did not issue, for tests of what it refuses.
import { createPrivateKey, webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";

/** A self-signed certificate naming a SPIFFE ID (here the agent's): not issued by Custody. */
export async function selfSignedSpiffeCert(
  spiffeId: string,
): Promise<{ cert: string; key: string; der: string }> {
  const alg = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
  const keys = (await webcrypto.subtle.generateKey(alg, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: "CN=impostor",
    keys,
    signingAlgorithm: alg,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 3_600_000),
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: "url", value: spiffeId }])],
  });
  const pkcs8 = await webcrypto.subtle.exportKey("pkcs8", keys.privateKey);
  const key = createPrivateKey({ key: Buffer.from(pkcs8), format: "der", type: "pkcs8" });
  return {
    cert: cert.toString("pem"),
    key: key.export({ format: "pem", type: "pkcs8" }).toString(),
    der: Buffer.from(cert.rawData).toString("base64"),
  };
}
