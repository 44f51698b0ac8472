// What the identity endpoint's tests (token exchange, discovery) and the
// decision endpoint's tests share: a three-link chain ending in review-42,
// its X.509-SVID (test/unit/x509/fixtures.ts, valid NOW .. NOW + 1 h), a JWT
// key, the task object, and a recorder whose acknowledgements a test controls.
import type { AgentTask, ChainLink } from "../../core/api/v1alpha1.ts";
import { API_VERSION, KIND } from "../../core/api/v1alpha1.ts";
import { custodyClaim } from "../../core/jwt/svid.ts";
import type { CertificateAuthority } from "../../core/x509/ca.ts";
import type { MintedSvid } from "../../core/x509/mint.ts";
import { generateJwtKey } from "../../operator/jwt-keys.ts";
import type { ProvenanceRecorder } from "../../operator/provenance.ts";
import { HOUR, mintSample, NOW as NOW_DATE, rootCa, SPIFFE_ID } from "./x509/fixtures.ts";

export { HOUR };
export const NOW = NOW_DATE.getTime();
/** The handlers' clock: a minute into the certificate's life. */
export const T = NOW + 60_000;
export const ISSUER = "https://custody.example";
export const SUB = SPIFFE_ID; // spiffe://custody.local/ns/team-a/agent/reviewer/task/review-42
export const PARENT = "spiffe://custody.local/ns/team-a/agent/planner/task/plan-1";
export const AUDIENCE = "https://api.example";
export const SCOPE = ["read:repos/acme/*", "write:repos/acme/docs"];
export const CHAIN: ChainLink[] = [
  { kind: "User", name: "alice@example.com", uid: "u-1", scope: SCOPE },
  { kind: "AgentTask", name: "plan-1", uid: "uid-plan", scope: SCOPE },
  { kind: "AgentTask", name: "review-42", uid: "uid-review", scope: SCOPE },
];

export const ca: CertificateAuthority = rootCa();
export const { minted } = mintSample(ca);
/** An SVID of another CA. */
export const foreign = mintSample(rootCa()).minted;
export const key = generateJwtKey("ES256", NOW - HOUR, NOW - HOUR);
export const custody = custodyClaim({
  taskUid: "uid-review",
  policyVersion: "policy-7",
  chain: CHAIN,
  spiffeIdOf: (n) => ({ "plan-1": PARENT, "review-42": SUB })[n],
});

/** review-42, Issued with `minted` as its certificate. */
export function task(
  over: {
    metadata?: Partial<AgentTask["metadata"]>;
    spec?: Partial<AgentTask["spec"]>;
    status?: Partial<NonNullable<AgentTask["status"]>>;
  } = {},
): AgentTask {
  return {
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: { name: "review-42", namespace: "team-a", uid: "uid-review", ...over.metadata },
    spec: {
      agent: { name: "reviewer" },
      scope: SCOPE,
      audiences: [AUDIENCE],
      ttl: "1h",
      serviceAccountName: "reviewer",
      ...over.spec,
    },
    status: {
      phase: "Issued",
      spiffeID: SUB,
      delegationChain: CHAIN,
      certificate: {
        serial: minted.serialHex,
        notBefore: new Date(NOW).toISOString(),
        notAfter: new Date(NOW + HOUR).toISOString(),
        renewalTime: new Date(NOW + HOUR / 2).toISOString(),
        publicKeySHA256: minted.publicKeySHA256,
        secretName: "review-42-credentials",
      },
      ...over.status,
    },
  } as AgentTask;
}

export interface Call {
  type: string;
  subject: string;
  data: Record<string, unknown>;
  rootUid: string;
  id: string | undefined;
}

/** A recorder whose acknowledgements the test controls. */
export function fakeRecorder(ack: (call: Call) => Promise<void> = () => Promise.resolve()) {
  const calls: Call[] = [];
  const recorder = {
    record: ((type: string, subject: string, data: Record<string, unknown>, rootUid: string, id?: string) => {
      const call = { type, subject, data, rootUid, id };
      calls.push(call);
      return ack(call);
    }) as unknown as ProvenanceRecorder["record"],
  };
  return { calls, open: () => Promise.resolve(recorder) };
}

export function deferred() {
  let resolve!: () => void;
  let reject!: (e: Error) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** The TLS peer a request carries for this SVID. */
export const peerOf = (m: MintedSvid) => ({ der: m.der, intermediates: [] });
