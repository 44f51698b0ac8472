// The Custody operator: wiring only. Composes the pure core with the
// Kubernetes and Kafka shells; holds no business rule of its own.

import { randomBytes, X509Certificate } from "node:crypto";
import { hostname } from "node:os";
import { SVID_VOLUME_NAME } from "../core/admission/injection.ts";
import {
  createRecordVerifier,
  REQUESTER_RECORD_ANNOTATION,
  type RequesterRecord,
} from "../core/admission/record.ts";
import { type AgentPolicy, CLUSTER_POLICY_PLURAL, POLICY_PLURAL } from "../core/api/policy.ts";
import { type AgentTask, API_VERSION, GROUP, VERSION } from "../core/api/v1alpha1.ts";
import { spiffeBundleJson } from "../core/delegation.ts";
import { publicJwk, publishedSince } from "../core/jwt/keys.ts";
import { ADMISSION_KEY_SECRET } from "../core/names.ts";
import type { CompiledPolicy } from "../core/policy/compile.ts";
import { selects } from "../core/policy/decide.ts";
import { findAbandoned } from "../core/provenance/abandoned.ts";
import { createEs256Signer, createKeyRing } from "../core/provenance/sign.ts";
import { verifyStreams } from "../core/provenance/verify.ts";
import { compressionFromEnv } from "../shells/kafka/codecs.ts";
import { kafkaConnectionFromEnv } from "../shells/kafka/connection.ts";
import { createTokenReviewer } from "../shells/kube/authentication.ts";
import { loadClusterCredentials } from "../shells/kube/credentials.ts";
import { type DeleteInfo, Informer, objectKey } from "../shells/kube/informer.ts";
import { LeaderElector } from "../shells/kube/leader-election.ts";
import { isNamespaceTerminating, KubeRest, restListWatch } from "../shells/kube/rest.ts";
import { createLogger } from "../shells/log.ts";
import { OperatorMetrics } from "../shells/metrics.ts";
import { WorkQueue } from "../shells/workqueue.ts";
import { loadAssertionIssuers } from "../webhook/assertions.ts";
import { startAdmissionWebhook } from "./admission.ts";
import { createAuthzenHandler } from "./authzen.ts";
import { loadOrCreateCa } from "./ca-store.ts";
import { loadOperatorConfig } from "./config.ts";
import { boundPort, serveHealth } from "./health.ts";
import { type IdentityEndpoint, startIdentityEndpoint } from "./identity-endpoint.ts";
import { JwtKeyManager } from "./jwt-keys.ts";
import { createJwtSvidMinter, JWT_REFRESH_ANNOTATION } from "./jwt-svids.ts";
import { TaskEventRecorder } from "./kube-events.ts";
import { PolicyStore, rootDelegatorGroups, selectionFacts } from "./policies.ts";
import {
  createKafkaRecorder,
  deterministicEventId,
  type ProvenanceRecorder,
  ProvenanceUnavailableError,
} from "./provenance.ts";
import { ProvenanceAnchor } from "./provenance-anchor.ts";
import {
  COMPONENT_LABEL,
  caFingerprint,
  credentialSecretName,
  ISSUER_CA_ANNOTATION,
  MANAGED_BY,
  MANAGED_BY_LABEL,
  policyStatusPath,
  SERIAL_ANNOTATION,
  TASK_LABEL,
  TRUST_BUNDLE_CONFIGMAP,
  taskCollectionPath,
} from "./resources.ts";
import { loadOrCreateSalt, loadOrCreateSigningKey } from "./signing-keys.ts";
import { CredentialIndex, createTaskReconciler, failureReason } from "./task-reconciler.ts";
import { CONTENT_HASH_ANNOTATION, INSTALLATION_ANNOTATION, TrustBundlePublisher } from "./trust-bundle.ts";

interface SecretMeta {
  /** The Secret's controller ownerReference names the AgentTask of its label. */
  ownedByTask?: boolean;
  metadata: {
    name: string;
    namespace: string;
    resourceVersion?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
}

async function main(): Promise<void> {
  const config = loadOperatorConfig();
  // TLS and SASL to Kafka; checked now so a bad value stops the start, naming the variable.
  const kafkaConnection = kafkaConnectionFromEnv();
  const kafkaCompression = compressionFromEnv();
  // Unique per process: a restarted pod must not continue a stream (or a
  // lease term) as if it were its predecessor.
  const identity = config.identity ?? `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`;
  const log = createLogger({ name: "operator", level: config.logLevel });
  const credentials = loadClusterCredentials();
  const rest = new KubeRest(credentials);
  log.info("starting", {
    identity,
    trustDomain: config.trustDomain,
    namespace: config.namespace,
    cluster: credentials.source,
  });

  const { ca, trustAnchorsDer, trustAnchorsPem } = await loadOrCreateCa({
    rest,
    namespace: config.namespace,
    secretName: config.caSecretName,
    trustDomain: config.trustDomain,
    log,
  });
  const signingKey = await loadOrCreateSigningKey(rest, config.namespace, log);
  // Sensitive values (request contexts, labels marked sensitive) reach events only as HMACs under it.
  const salt = await loadOrCreateSalt(rest, config.namespace, log);
  // The admission webhook's key: it signs requester records and workload
  // stamps; the reconciler verifies records with its public half.
  const admissionKey = await loadOrCreateSigningKey(
    rest,
    config.namespace,
    log,
    ADMISSION_KEY_SECRET,
    "admission-key",
  );
  const admissionSigner = createEs256Signer(admissionKey);
  const admissionKeys = createKeyRing([admissionKey]);
  // The provenance writer exists only while this replica leads: one writer
  // per stream, its epoch the Lease's transition count.
  let leaderRecorder: ProvenanceRecorder | undefined;
  const recorder: ProvenanceRecorder = {
    record: (type, subject, data, rootUid, id) =>
      leaderRecorder
        ? leaderRecorder.record(type, subject, data, rootUid, id)
        : Promise.reject(
            new ProvenanceUnavailableError(
              leading
                ? "the provenance stream is not open yet (waiting for Kafka)"
                : "not the leader: provenance is written only by the leader",
            ),
          ),
    get healthy() {
      return leaderRecorder?.healthy ?? false;
    },
    get backlog() {
      return leaderRecorder?.backlog ?? 0;
    },
    get ackedHead() {
      return leaderRecorder?.ackedHead;
    },
    resumeOffsets: () => leaderRecorder?.resumeOffsets?.() ?? {},
    pin: () => leaderRecorder?.pin?.() ?? (() => undefined),
    close: async () => {
      await leaderRecorder?.close();
      leaderRecorder = undefined;
    },
  };

  let identityEndpoint: IdentityEndpoint | undefined;
  const anchor = new ProvenanceAnchor(
    rest,
    config.namespace,
    createEs256Signer(signingKey),
    log.child("anchor"),
  );
  const anchorHead = () =>
    anchor
      .anchor(recorder.ackedHead, recorder.resumeOffsets?.())
      .catch((err: unknown) => log.warn("provenance checkpoint not anchored", { error: errorText(err) }));
  const checkpointTimer = setInterval(() => {
    if (leading) void anchorHead();
    // Every replica's exchange stream is checkpointed too, so its truncation shows in verify.
    const exchanges = identityEndpoint?.ackedHead();
    if (exchanges) {
      anchor
        .anchor(exchanges)
        .catch((err: unknown) =>
          log.warn("exchange stream checkpoint not anchored", { error: errorText(err) }),
        );
    }
  }, config.checkpointIntervalMs);
  checkpointTimer.unref();

  // JWT signing keys, apart from the CA key: every replica loads them (its
  // JWKS and token endpoint), the leader rotates them.
  const jwtKeys = new JwtKeyManager({
    rest,
    namespace: config.namespace,
    alg: config.jwt.alg,
    schedule: config.jwt.schedule,
    log: log.child("jwt-keys"),
  });
  await jwtKeys.load();
  const x509Authorities = trustAnchorsDer.map((der) => ({
    der,
    publicKey: new X509Certificate(der).publicKey,
  }));
  // The SPIFFE bundle lists the X.509 and the JWT authorities; the latter
  // change as keys are published and retired.
  const bundleBase = () => {
    const now = Date.now();
    return {
      "ca.crt": trustAnchorsPem,
      "bundle.spiffe": spiffeBundleJson(
        x509Authorities,
        Math.max(1, Math.floor(publishedSince(jwtKeys.ring, now, config.jwt.schedule) / 1000)),
        config.jwt.jwksMaxAgeSeconds,
        jwtKeys.published(now).map((k) => publicJwk(k, "jwt-svid")),
      ),
    };
  };
  const bundles = new TrustBundlePublisher(
    rest,
    log.child("trust-bundle"),
    bundleBase(),
    caFingerprint(ca.certDer),
  );

  // 10,000 tasks should fit in little memory: the cache keeps each task as its JSON
  // text (a few KB as one string, instead of a tree of small objects) and
  // parses it when a reconcile needs it, which costs microseconds.
  const tasks = new Informer<CompactTask>({
    name: "agenttasks",
    listWatch: restListWatch(rest, taskCollectionPath()),
    transform: compactTask,
    logger: log.child("informer"),
  });
  /** A cached task, parsed from its compact JSON (each caller gets its own copy). */
  const getTask = (key: string): AgentTask | undefined => {
    const c = tasks.get(key);
    return c ? (JSON.parse(c.json) as AgentTask) : undefined;
  };
  const secrets = new Informer<SecretMeta>({
    name: "credential-secrets",
    // Metadata only: what the cache keeps, and no private key crosses the watch.
    listWatch: restListWatch(rest, "/api/v1/secrets", undefined, { metadataOnly: true }),
    labelSelector: `${MANAGED_BY_LABEL}=${MANAGED_BY},${TASK_LABEL}`,
    transform: (s) => ({
      ownedByTask:
        s.ownedByTask ??
        (
          (s.metadata as { ownerReferences?: Array<{ kind: string; name: string; controller?: boolean }> })
            .ownerReferences ?? []
        ).some(
          (o) =>
            o.controller === true && o.kind === "AgentTask" && o.name === s.metadata.labels?.[TASK_LABEL],
        ),
      metadata: {
        name: s.metadata.name,
        namespace: s.metadata.namespace,
        ...(s.metadata.resourceVersion ? { resourceVersion: s.metadata.resourceVersion } : {}),
        labels: { [TASK_LABEL]: s.metadata.labels?.[TASK_LABEL] ?? "" },
        annotations: {
          [SERIAL_ANNOTATION]: s.metadata.annotations?.[SERIAL_ANNOTATION] ?? "",
          [JWT_REFRESH_ANNOTATION]: s.metadata.annotations?.[JWT_REFRESH_ANNOTATION] ?? "",
          [ISSUER_CA_ANNOTATION]: s.metadata.annotations?.[ISSUER_CA_ANNOTATION] ?? "",
        },
      },
    }),
    logger: log.child("informer"),
  });
  const bundleMaps = new Informer<BundleMeta>({
    name: "trust-bundles",
    listWatch: restListWatch(rest, "/api/v1/configmaps"),
    labelSelector: `${MANAGED_BY_LABEL}=${MANAGED_BY},${COMPONENT_LABEL}=trust-bundle`,
    transform: (c) => ({
      metadata: {
        name: c.metadata.name,
        namespace: c.metadata.namespace,
        annotations: {
          [CONTENT_HASH_ANNOTATION]: c.metadata.annotations?.[CONTENT_HASH_ANNOTATION] ?? "",
          [INSTALLATION_ANNOTATION]: c.metadata.annotations?.[INSTALLATION_ANNOTATION] ?? "",
        },
      },
      // The published revocation list is itself the durable record of
      // revocations whose tasks are gone: kept (and merged) until notAfter.
      revoked:
        ("revoked" in c ? c.revoked : (c as { data?: Record<string, string> }).data?.["revoked.txt"]) ?? "",
    }),
    logger: log.child("informer"),
  });

  // Pods that opt in, slimmed to what the `injected` event needs: provenance
  // records an injection once the pod exists (name and uid are not assigned
  // at mutating admission).
  const pods = new Informer<PodMeta>({
    name: "identity-pods",
    listWatch: restListWatch(rest, "/api/v1/pods"),
    labelSelector: TASK_LABEL,
    transform: slimPod,
    logger: log.child("informer"),
  });

  const policyStore = new PolicyStore({
    defaultDecision: config.policy.defaultDecision,
    budgetMs: config.policy.budgetMs,
  });
  const agentPolicies = new Informer<AgentPolicy>({
    name: "agentpolicies",
    listWatch: restListWatch(rest, `/apis/${GROUP}/${VERSION}/${POLICY_PLURAL}`),
    logger: log.child("informer"),
  });
  const clusterPolicies = new Informer<AgentPolicy>({
    name: "clusteragentpolicies",
    listWatch: restListWatch(rest, `/apis/${GROUP}/${VERSION}/${CLUSTER_POLICY_PLURAL}`),
    logger: log.child("informer"),
  });
  /** The requester record as the webhook signed it (labels at creation), when it verifies. */
  const recordOf = (t: AgentTask): RequesterRecord | undefined => {
    try {
      return recordVerifier(t.metadata.annotations?.[REQUESTER_RECORD_ANNOTATION], {
        namespace: t.metadata.namespace ?? "",
        name: t.metadata.name,
        uid: t.metadata.uid,
        spec: t.spec as unknown as Record<string, unknown>,
        creationTimestamp: t.metadata.creationTimestamp,
      });
    } catch {
      return undefined;
    }
  };
  const recordVerifier = createRecordVerifier(admissionKeys, config.recordMaxSkewMs);

  const metrics = new OperatorMetrics();
  // Every replica serves admission (the Service balances; a standby answers
  // at once); only the leader writes the registration.
  const admission = await startAdmissionWebhook({
    rest,
    namespace: config.namespace,
    trustDomain: config.trustDomain,
    signer: admissionSigner,
    keys: admissionKeys,
    cachedTask: (ns, name) => getTask(`${ns}/${name}`),
    assertionIssuers: loadAssertionIssuers(),
    recordMaxSkewMs: config.recordMaxSkewMs,
    verifyRecord: recordVerifier,
    excludedNamespaces: config.webhook.excludedNamespaces,
    ca: () => ca,
    // Roots plus bundle.crt: during a CA rotation both the old and the new CA are trusted.
    caBundlePem: trustAnchorsPem,
    webhook: config.webhook,
    log: log.child("admission"),
    metrics,
  });
  const credentialIndex = new CredentialIndex();
  // The CAs whose credentials are this installation's (the issuing CA and every trust anchor).
  const ourCas = new Set([caFingerprint(ca.certDer), ...trustAnchorsDer.map(caFingerprint)]);
  // Events wait while tasks wait for a worker (a cascade, a burst): the
  // status writes come first. `queue` is declared below; this runs later.
  const events = new TaskEventRecorder(rest, log.child("events"), identity, {
    busy: () => queue.depth > 0,
  });
  const reconciler = createTaskReconciler({
    rest,
    getTask,
    cachedResourceVersion: (key) => tasks.get(key)?.metadata.resourceVersion,
    credentials: credentialIndex,
    ca: () => ca,
    trustAnchorsPem,
    recorder,
    events,
    bundles,
    trustDomain: config.trustDomain,
    recordKeys: admissionKeys,
    verifyRecord: recordVerifier,
    ...(config.failpoint
      ? {
          failpoint: (name: string) => {
            if (name !== config.failpoint) return;
            log.error("failpoint reached: exiting", { failpoint: name });
            process.exit(86);
          },
        }
      : {}),
    recordMaxSkewMs: config.recordMaxSkewMs,
    renewJitter: config.renewJitter,
    maxChainDepth: config.maxChainDepth,
    salt,
    // Defined below with the revocation list; called only once reconciling runs.
    credentialWithdrawn: (t) => rememberWithdrawn(t),
    jwt: createJwtSvidMinter({
      settings: { issuer: config.oidc.issuer, ttlMs: config.jwt.ttlMs, signing: () => jwtKeys.signing() },
      trustDomain: config.trustDomain,
      getTask,
    }),
    log: log.child("reconciler"),
    metrics,
    policies: policyStore,
  });
  let leading = false;
  const queue = new WorkQueue({
    name: "agenttasks",
    handler: async (key) => {
      try {
        return await reconciler.reconcile(key);
      } catch (err) {
        log.warn("reconcile failed; retrying with backoff", { object: key, error: errorText(err) });
        metrics.failure(failureReason(err));
        throw err;
      }
    },
    concurrency: config.workers,
    logger: log.child("queue"),
    metrics: metrics.workQueue("agenttasks"),
  });

  // Revoked certificates that have not expired yet, per namespace, in the
  // trust bundle; entries leave it once their notAfter passes. Sources: the
  // Revoked tasks in the cache, certificates whose Secret was deleted to take
  // access away (remembered here: at once, before the task's status says so,
  // which waits for Kafka; and after the task itself is gone), and what the
  // ConfigMap already lists (so a revocation outlives its task and a restart
  // of the operator).
  const withdrawn = new Map<string, Map<string, string>>();
  const revokedLines = (t: AgentTask, now: number): Array<[string, string]> => {
    const c = t.status?.certificate;
    if (!c) return [];
    const out: Array<[string, string]> = [];
    if (Date.parse(c.notAfter) > now)
      out.push([c.serial, `${c.serial} ${t.status?.spiffeID ?? ""} ${c.notAfter}`]);
    if (c.previousSerial && c.previousNotAfter && Date.parse(c.previousNotAfter) > now)
      out.push([c.previousSerial, `${c.previousSerial} ${t.status?.spiffeID ?? ""} ${c.previousNotAfter}`]);
    return out;
  };
  const publishRevoked = (ns: string) => {
    const now = Date.now();
    const entries = new Map<string, string>();
    for (const line of (bundleMaps.get(`${ns}/${TRUST_BUNDLE_CONFIGMAP}`)?.revoked ?? "").split("\n")) {
      const live = liveRevokedLine(line, now);
      if (live) entries.set(...live);
    }
    const gone = withdrawn.get(ns);
    for (const [serial, line] of gone ?? []) {
      if (Date.parse(line.split(" ")[2] ?? "") > now) entries.set(serial, line);
      else gone?.delete(serial);
    }
    if (gone?.size === 0) withdrawn.delete(ns);
    for (const c of tasks.list(ns)) {
      if (!c.state.startsWith("Revoked|")) continue;
      for (const [serial, line] of revokedLines(JSON.parse(c.json) as AgentTask, now))
        entries.set(serial, line);
    }
    bundles.setRevoked(ns, [...entries.values()]);
    return ensureBundle(ns);
  };
  /**
   * Copies of these certificates stay valid until notAfter: listed as
   * revoked until then. True once the namespace's bundle lists them (or is
   * not this installation's to write).
   */
  const rememberWithdrawn = (t: AgentTask): Promise<boolean> => {
    const lines = revokedLines(t, Date.now());
    if (lines.length === 0) return Promise.resolve(true);
    const ns = t.metadata.namespace ?? "";
    const m = withdrawn.get(ns) ?? new Map<string, string>();
    for (const [serial, line] of lines) m.set(serial, line);
    withdrawn.set(ns, m);
    return schedulePublishRevoked(ns);
  };
  // A cascade revokes a thousand tasks in a second: one list rebuild per
  // namespace per burst, not one per task (which was quadratic).
  // Every caller within the window shares the one write's outcome.
  const pendingRevoked = new Map<string, Promise<boolean>>();
  const schedulePublishRevoked = (ns: string): Promise<boolean> => {
    const pending = pendingRevoked.get(ns);
    if (pending) return pending;
    const published = new Promise<boolean>((resolve) => {
      setTimeout(() => {
        pendingRevoked.delete(ns);
        // Settles whatever happens: a deleted task's finalizer waits on it.
        Promise.resolve()
          .then(() => publishRevoked(ns))
          .then(resolve, (err: unknown) => {
            log.warn("revocation list not rebuilt", { namespace: ns, error: errorText(err) });
            resolve(false);
          });
      }, 100);
    });
    pendingRevoked.set(ns, published);
    return published;
  };
  const revokedSweep = setInterval(() => {
    if (!leading) return;
    admission
      .sweepJtis(Date.now())
      .catch((err: unknown) => log.warn("assertion jti sweep failed", { error: errorText(err) }));
    // Repairs a registration someone edited or deleted: without it opted-in
    // pods would skip their checks (server-side apply: a no-op when unchanged).
    admission
      .register()
      .catch((err: unknown) => log.warn("admission webhooks not re-registered", { error: errorText(err) }));
    // Expired entries leave the lists.
    for (const ns of new Set([
      ...tasks
        .list()
        .filter((c) => c.state.startsWith("Revoked|"))
        .map((c) => c.metadata.namespace),
      ...withdrawn.keys(),
      ...bundleMaps
        .list()
        .filter((b) => b.revoked.length > 0)
        .map((b) => b.metadata.namespace),
    ])) {
      publishRevoked(ns);
    }
  }, 60_000);
  revokedSweep.unref();

  // JWT keys: the leader rotates on schedule, standbys reload the leader's
  // ring; then every bundle is brought up to date with the published set.
  const jwtKeyTick = setInterval(
    () => {
      const step = leading ? jwtKeys.rotate().then(() => undefined) : jwtKeys.load();
      step
        .then(() => {
          if (bundles.setBase(bundleBase()) && leading) {
            for (const ns of new Set(tasks.list().map((c) => c.metadata.namespace))) publishRevoked(ns);
          }
        })
        .catch((err: unknown) => log.warn("JWT signing keys not refreshed", { error: errorText(err) }));
    },
    Math.min(10_000, Math.max(500, config.jwt.schedule.publishAheadMs / 4)),
  );
  jwtKeyTick.unref();

  identityEndpoint = await startIdentityEndpoint({
    addr: config.oidc.addr,
    issuer: config.oidc.issuer,
    trustDomain: config.trustDomain,
    service: { name: config.oidc.service, namespace: config.namespace },
    dnsNames: config.oidc.dnsNames,
    ca: () => ca,
    trustAnchorsPem,
    trustAnchorsDer: () => trustAnchorsDer,
    keys: jwtKeys,
    getTask,
    jwksMaxAgeSeconds: config.jwt.jwksMaxAgeSeconds,
    ...(config.oidc.tokenEndpoint ? { tokenEndpoint: config.oidc.tokenEndpoint } : {}),
    ...(config.oidc.tlsFiles ? { tlsFiles: config.oidc.tlsFiles } : {}),
    authzen: (openStream) =>
      createAuthzenHandler({
        issuer: config.oidc.issuer,
        trustDomain: config.trustDomain,
        keys: jwtKeys,
        trustAnchorsDer: () => trustAnchorsDer,
        getTask,
        recordOf,
        policies: policyStore,
        // Resource servers' tokens must be bound to this issuer: a token for the API server does not pass.
        reviewToken: createTokenReviewer(rest, [config.oidc.issuer]),
        callers: new Set(config.policy.authzenCallers),
        recorder: openStream,
        salt,
        reportsPerSecond: config.policy.reportsPerSecond,
        log: log.child("authzen"),
      }),
    openRecorder: () =>
      createKafkaRecorder({
        brokers: config.kafka.brokers,
        topic: config.kafka.topic,
        partitions: config.kafka.partitions,
        replicationFactor: config.kafka.replicationFactor,
        writer: `${identity}-token-endpoint`,
        epoch: 0,
        signingKey,
        connection: kafkaConnection,
        compression: kafkaCompression,
        log: log.child("provenance"),
      }),
    log: log.child("identity"),
  });
  log.info("identity endpoint", { issuer: config.oidc.issuer, port: identityEndpoint.port });

  const enqueue = (key: string) => {
    if (leading) queue.add(key);
  };

  // Only the Secret Custody names and owns counts: a look-alike labelled by
  // someone else must neither tell the operator a credential exists nor,
  // deleted, make it reissue.
  const credentialKeyOf = (s: SecretMeta): string | undefined => {
    const task = s.metadata.labels?.[TASK_LABEL];
    if (!task || s.metadata.name !== credentialSecretName(task) || !s.ownedByTask) return undefined;
    return `${s.metadata.namespace}/${task}`;
  };
  const observeSecret = (s: SecretMeta) => {
    const key = credentialKeyOf(s);
    if (key) {
      credentialIndex.set(
        key,
        s.metadata.annotations?.[SERIAL_ANNOTATION] || undefined,
        // Secrets written before the annotation existed count as ours (as before).
        !s.metadata.annotations?.[ISSUER_CA_ANNOTATION] ||
          ourCas.has(s.metadata.annotations[ISSUER_CA_ANNOTATION]),
      );
      const due = s.metadata.annotations?.[JWT_REFRESH_ANNOTATION];
      if (due) credentialIndex.setTokensRefreshAt(key, Number(due));
    }
    return key;
  };
  secrets.onAdd((s) => {
    observeSecret(s);
  });
  secrets.onUpdate((_old, s) => {
    const key = observeSecret(s);
    if (key && tasks.hasSynced()) enqueue(key);
  });
  secrets.onDelete((s: SecretMeta, _info: DeleteInfo) => {
    const key = credentialKeyOf(s);
    if (!key) return;
    credentialIndex.set(key, undefined);
    if (tasks.hasSynced()) enqueue(key);
  });
  // Only the leader writes bundles: a standby's view of the revoked list is
  // not authoritative, and two writers would overwrite each other.
  // Only where this installation has tasks of its own (records its admission
  // key signed): another installation's namespaces are the other's to
  // publish, and two writers of one ConfigMap would rewrite it forever.
  const servesNamespace = (ns: string) => {
    const marker = bundleMaps.get(`${ns}/${TRUST_BUNDLE_CONFIGMAP}`)?.metadata.annotations?.[
      INSTALLATION_ANNOTATION
    ];
    // Unclaimed, or ours: publish (revocations included, whatever became of the records).
    if (!marker || ourCas.has(marker)) return true;
    // Another installation's: only where we have tasks of our own there too.
    return (
      (withdrawn.get(ns)?.size ?? 0) > 0 ||
      tasks.list(ns).some((c) => recordOf(JSON.parse(c.json) as AgentTask) !== undefined)
    );
  };
  /**
   * True once the namespace's bundle is current, is not this installation's
   * to write, or can no longer exist (its namespace is being deleted, and
   * the bundle with it: the list's limit, as docs/operations.md says); false
   * when not leading or the write failed.
   */
  const ensureBundle = async (ns: string): Promise<boolean> => {
    if (!leading) return false;
    if (!servesNamespace(ns)) return true;
    return bundles.ensure(ns).then(
      () => true,
      (err: unknown) => {
        if (isNamespaceTerminating(err)) return true;
        log.warn("trust bundle not published", { namespace: ns, error: errorText(err) });
        return false;
      },
    );
  };
  bundleMaps.onUpdate((_o, c) => {
    bundles.observed(c.metadata.namespace, c.metadata.annotations?.[CONTENT_HASH_ANNOTATION]);
    if (tasks.list(c.metadata.namespace).length > 0) void ensureBundle(c.metadata.namespace);
  });
  bundleMaps.onDelete((c) => {
    bundles.observed(c.metadata.namespace, undefined);
    if (tasks.list(c.metadata.namespace).length > 0) void ensureBundle(c.metadata.namespace);
  });
  bundleMaps.onAdd((c) =>
    bundles.observed(c.metadata.namespace, c.metadata.annotations?.[CONTENT_HASH_ANNOTATION]),
  );

  const health = await serveHealth(config.healthAddr.host, config.healthAddr.port, {
    ready: {
      "ca-loaded": () => ca !== undefined,
      "webhook-serving": () => admission.port > 0,
      "tasks-synced": () => tasks.hasSynced(),
      "secrets-synced": () => secrets.hasSynced(),
    },
    live: { "queue-running": () => !queue.isShuttingDown() },
    metrics: () => {
      metrics.provenanceBacklog(recorder.backlog);
      return metrics.render();
    },
  });
  log.info("health endpoints listening", { addr: `${config.healthAddr.host}:${boundPort(health)}` });

  // Policies: compiled once per version; a change re-evaluates the tasks the
  // old or the new version selects (revoke, reissue narrower, or record).
  const onPolicy = (before: CompiledPolicy | undefined, after: CompiledPolicy | undefined) => {
    // Only the leader reconciles; a new leader goes over every task anyway.
    if (!leading || !tasks.hasSynced()) return;
    for (const c of tasks.list()) {
      const t = JSON.parse(c.json) as AgentTask;
      const chain = t.status?.delegationChain;
      const record = recordOf(t);
      const facts = selectionFacts(t, record, chain, rootDelegatorGroups(t, record, chain, getTask));
      if ((before && selects(before, facts)) || (after && selects(after, facts))) enqueue(objectKey(c));
    }
  };
  const writePolicyStatus = (p: AgentPolicy, version: string) => {
    if (!leading || (p.status?.version === version && p.status?.observedGeneration === p.metadata.generation))
      return;
    const path = policyStatusPath(p);
    rest
      .patch(path, { status: { version, observedGeneration: p.metadata.generation ?? 0 } })
      .catch((err: unknown) => log.debug("policy status not written", { path, error: errorText(err) }));
  };
  for (const informer of [agentPolicies, clusterPolicies]) {
    const onUpsert = (p: AgentPolicy) => {
      const { before, after } = policyStore.upsert(p);
      writePolicyStatus(p, after.version);
      if (before?.version !== after.version) onPolicy(before, after);
    };
    informer.onAdd(onUpsert);
    informer.onUpdate((_old, p) => onUpsert(p));
    informer.onDelete((p) => onPolicy(policyStore.remove(p), undefined));
  }

  // Credentials first, so that the first pass over the tasks knows which
  // Secrets exist and does not re-issue what is already issued. Policies too:
  // no credential is decided before the policies in force are known.
  secrets.start();
  bundleMaps.start();
  agentPolicies.start();
  clusterPolicies.start();
  await Promise.all([
    secrets.waitForSync(),
    bundleMaps.waitForSync(),
    agentPolicies.waitForSync(),
    clusterPolicies.waitForSync(),
  ]);
  // parent → children, so that a change to a task reaches its whole subtree
  // at once (a revoked root revokes 1,000 descendants in one pass, not one
  // level per round trip).
  const children = new Map<string, Set<string>>();
  const link = (t: CompactTask, add: boolean) => {
    if (!t.parent) return;
    const parentKey = `${t.metadata.namespace}/${t.parent}`;
    const key = objectKey(t);
    const set = children.get(parentKey);
    if (add) {
      if (set) set.add(key);
      else children.set(parentKey, new Set([key]));
    } else if (set) {
      set.delete(key);
      if (set.size === 0) children.delete(parentKey);
    }
  };
  const enqueueDescendants = (key: string) => {
    const seen = new Set<string>([key]);
    const pending = [key];
    while (pending.length > 0) {
      for (const child of children.get(pending.pop()!) ?? []) {
        if (seen.has(child)) continue;
        seen.add(child);
        enqueue(child);
        pending.push(child);
      }
    }
  };
  tasks.onAdd((t) => {
    link(t, true);
    enqueue(objectKey(t));
  });
  tasks.onUpdate((old, t) => {
    const key = objectKey(t);
    if (old.parent !== t.parent) link(old, false);
    link(t, true);
    reconciler.observed(key, t.metadata.resourceVersion);
    enqueue(key);
    if (old.state !== t.state) {
      enqueueDescendants(key);
      if (t.state.startsWith("Issued|")) recordPendingInjections(t.metadata.namespace, t.metadata.name);
      if (t.state.startsWith("Revoked|") && !old.state.startsWith("Revoked|"))
        schedulePublishRevoked(t.metadata.namespace);
    }
  });
  tasks.onDelete((t) => {
    const key = objectKey(t);
    link(t, false);
    enqueue(key);
    enqueueDescendants(key);
    // Deleted while it held a certificate (the finalizer revoked it) or after
    // it was revoked: copies stay valid until notAfter, so the list keeps them.
    if (t.state.startsWith("Issued|") || t.state.startsWith("Revoked|"))
      rememberWithdrawn(JSON.parse(t.json) as AgentTask);
  });
  // Injections recorded by this process (a re-list or a new leader repeats
  // some, with the same deterministic ids).
  const injected = new Set<string>();
  const recordInjection = (p: PodMeta) => {
    if (!leading || !p.injected || injected.has(`${p.metadata.uid}|${p.task}`)) return;
    const key = `${p.metadata.namespace}/${p.task}`;
    reconciler
      .recordInjected(key, {
        namespace: p.metadata.namespace,
        name: p.metadata.name,
        uid: p.metadata.uid,
        containers: p.containers,
      })
      .then(
        (done) => {
          if (done) injected.add(`${p.metadata.uid}|${p.task}`);
        },
        (err: unknown) =>
          log.warn("injected event not recorded", {
            pod: `${key}/${p.metadata.name}`,
            error: errorText(err),
          }),
      );
  };
  pods.onAdd(recordInjection);
  pods.onUpdate((_o, p) => recordInjection(p));
  pods.onDelete((p) => injected.delete(`${p.metadata.uid}|${p.task}`));
  // A task that becomes Issued: its pods that were waiting for the credential.
  const recordPendingInjections = (ns: string, task: string) => {
    for (const p of pods.list(ns)) if (p.task === task) recordInjection(p);
  };

  tasks.start();
  pods.start();
  await tasks.waitForSync();
  log.info("caches synced", {
    tasks: tasks.size,
    credentialSecrets: credentialIndex.size,
    apiVersion: API_VERSION,
  });

  let stopping = false;
  // A registration in flight when a signal comes: unregistering waits for it to land.
  let registering: Promise<unknown> = Promise.resolve();
  /**
   * With CUSTODY_WEBHOOK_REMOVE_ON_EXIT (`make run`), takes the fail-closed
   * webhooks away, so that a local cluster is not left refusing every
   * AgentTask write once this process is gone. Only while no successor can
   * have registered its own endpoint under the same name: on a signal (the
   * lease is released after this), or when taking over failed (the lease is
   * still ours), never after the lease was lost.
   */
  const unregisterOnExit = async (): Promise<void> => {
    if (!config.webhook.removeOnExit) return;
    await registering.catch(() => undefined);
    await admission
      .unregister()
      .then(
        (removed) =>
          removed && log.info("admission webhooks unregistered", { name: config.webhook.configName }),
      )
      .catch((err: unknown) =>
        log.warn("could not unregister the admission webhooks", { error: errorText(err) }),
      );
  };
  /** Exits after a failed takeover; the webhooks go first when asked (bounded: the exit must happen). */
  const exitAfterFailedTakeover = (err: unknown): void => {
    log.error("could not start leading", { error: errorText(err) });
    // No longer acting as leader meanwhile: the sweep would register again.
    leading = false;
    stopping = true;
    const bound = new Promise((r) => setTimeout(r, 5_000).unref());
    void Promise.race([unregisterOnExit(), bound]).finally(() => process.exit(1));
  };
  const startLeading = async (epoch: number) => {
    // Admission and the provenance key first: neither needs Kafka, and a
    // leader waiting for Kafka must not take the fail-closed webhook (or the
    // settling of overdue tasks) down with it.
    registering = admission.register();
    await registering;
    await anchor.publishKey(signingKey);
    if (stopping) return;
    // The serials Secrets hold now, before anything below deletes one: what
    // a predecessor delivered is not "abandoned" because it was revoked since.
    const heldAtTakeover = new Map<string, string>();
    for (const c of tasks.list()) {
      const serial = credentialIndex.get(objectKey(c));
      if (serial) heldAtTakeover.set(objectKey(c), serial);
    }
    leading = true;
    metrics.leader(true);
    // Bundles may be stale (a new CA, anchor or revocation since the last
    // leader) or missing (deleted meanwhile): settle every namespace now.
    for (const ns of new Set(tasks.list().map((c) => c.metadata.namespace))) publishRevoked(ns);
    // Overdue tasks first: a deadline that passed while no leader ran is
    // settled (credential deleted, Expired) before anything is issued.
    const enqueueTasks = (which: (c: CompactTask, overdue: boolean) => boolean) => {
      const now = Date.now();
      const all = tasks.list().map((c) => ({ c, key: objectKey(c), deadline: deadlineOf(c) }));
      for (const t of all) if (t.deadline <= now && which(t.c, true)) queue.add(t.key);
      for (const t of all) if (t.deadline > now && which(t.c, false)) queue.add(t.key);
      return all.length;
    };
    // Until the stream below is open, only what takes access away: overdue,
    // revoked and deleted tasks (their credentials go at once; their events
    // follow). Should Kafka keep the stream shut, every task after 5 s, so
    // that those waiting to be issued say why.
    enqueueTasks((c, overdue) => {
      const [, , , revoked, deleting] = c.state.split("|");
      const urgent = overdue || revoked === "true" || deleting !== "";
      // Their subtrees too: a cascade deletes the descendants' credentials.
      if (urgent) enqueueDescendants(objectKey(c));
      return urgent;
    });
    const everyone = setTimeout(() => {
      if (leading && !leaderRecorder) enqueueTasks(() => true);
    }, 5_000);
    const myStream = `operator/${identity}`;
    log.info("leading: opening the provenance stream", { stream: myStream, epoch });
    const writer = await openProvenanceStream(epoch, myStream, heldAtTakeover).finally(() =>
      clearTimeout(everyone),
    );
    if (!writer) return;
    leaderRecorder = writer;
    log.info("leading: reconciling", { stream: myStream, epoch, tasks: enqueueTasks(() => true) });
    // Pods that appeared while no leader recorded them.
    for (const p of pods.list()) recordInjection(p);
  };
  /**
   * The leader's Kafka writer, its start anchored and its predecessors'
   * tails settled. Opening is retried with backoff until Kafka answers; the
   * steps after it reuse that writer (a second writer of the same epoch would
   * restart the sequence: a fork), and after 5 failures the error ends
   * leadership (the process exits; a standby takes over). Undefined once
   * this replica no longer leads.
   */
  const openProvenanceStream = async (
    epoch: number,
    myStream: string,
    heldAtTakeover: ReadonlyMap<string, string>,
  ): Promise<ProvenanceRecorder | undefined> => {
    const backoff = (attempt: number) => Math.min(30_000, 1000 * 2 ** Math.min(attempt - 1, 5));
    let writer: ProvenanceRecorder | undefined;
    for (let attempt = 1; !writer; attempt++) {
      if (!leading || stopping) return undefined;
      try {
        writer = await createKafkaRecorder({
          brokers: config.kafka.brokers,
          topic: config.kafka.topic,
          partitions: config.kafka.partitions,
          replicationFactor: config.kafka.replicationFactor,
          writer: identity,
          epoch,
          signingKey,
          connection: kafkaConnection,
          compression: kafkaCompression,
          log: log.child("provenance"),
        });
      } catch (err) {
        log.warn("provenance stream not open (Kafka unreachable?); leading without issuing until it is", {
          attempt,
          retryMs: backoff(attempt),
          error: errorText(err),
        });
        await new Promise((r) => setTimeout(r, backoff(attempt)));
      }
    }
    // Where this writer's records begin, before its first event; then what
    // the predecessors left: serials announced but never delivered. Only
    // then may this writer record (and so issue) anything.
    const startOffsets = writer.resumeOffsets?.() ?? {};
    for (let attempt = 1; ; attempt++) {
      if (!leading || stopping) {
        await writer.close().catch(() => undefined);
        return undefined;
      }
      try {
        await anchor.start(myStream, startOffsets);
        await settleAbandoned(writer, myStream, heldAtTakeover);
        return writer;
      } catch (err) {
        if (attempt >= 5) throw err;
        log.warn("predecessors' tails not settled yet; retrying", { attempt, error: errorText(err) });
        await new Promise((r) => setTimeout(r, backoff(attempt)));
      }
    }
  };
  const settleAbandoned = async (
    writer: ProvenanceRecorder,
    myStream: string,
    heldAtTakeover: ReadonlyMap<string, string>,
  ) => {
    const streams = await anchor.unsettled(myStream);
    if (streams.length === 0 || !writer.readTail) return;
    const from = new Map<number, string>();
    for (const s of streams) {
      for (const [p, o] of Object.entries(s.partitions)) {
        const prev = from.get(Number(p));
        if (prev === undefined || BigInt(o) < BigInt(prev)) from.set(Number(p), o);
      }
    }
    const names = new Set(streams.map((s) => s.stream));
    const records = (await writer.readTail(from)).sort((a, b) =>
      a.partition !== b.partition ? a.partition - b.partition : Number(BigInt(a.offset) - BigInt(b.offset)),
    );
    // Act only on events that are authentic (published keys, intact, no fork):
    // whoever can write to the topic must not get the leader to sign their
    // events as abandoned issuances, nor hide a real one. Gaps are expected:
    // the tail starts at per-partition bounds, so a stream's earlier events
    // in other partitions are not part of it.
    // Parsed once: each record with its event (undefined when not JSON).
    const theirs = records
      .map((r) => ({ r, e: parseTailEvent(r.value) }))
      .filter((x) => names.has(x.e?.custodystream ?? ""));
    const report = verifyStreams(
      theirs.map(({ r }) => ({ partition: r.partition, offset: r.offset, value: r.value })),
      { keys: await anchor.publishedKeys(), allowRetentionGap: true, listAuthentic: true },
    );
    const untrusted = new Set<string>();
    for (const st of report.streams) {
      const errors = st.findings.filter((f) => AUTHENTICITY_FINDINGS.has(f.kind));
      if (errors.length === 0) continue;
      untrusted.add(st.stream);
      log.error("a predecessor's tail does not verify: not settled; run custody verify", {
        stream: st.stream,
        findings: errors.length,
        first: errors[0]!.message.slice(0, 300),
      });
    }
    // Only what a verified signature covers: an unsealed record no seal
    // reaches could have been written by anyone who can write to the topic.
    const authentic = new Set<string>();
    for (const st of report.streams)
      if (!untrusted.has(st.stream)) for (const at of st.authentic ?? []) authentic.add(at);
    // In stream order: a replayed copy in a lower partition may be the one
    // verify kept, and findAbandoned reads each task's events in order.
    const events = theirs
      .flatMap(({ r, e }) => (e && authentic.has(`${r.partition}:${r.offset}`) ? [e] : []))
      .sort((a, b) =>
        a.custodystream === b.custodystream
          ? (a.custodyseq ?? 0) - (b.custodyseq ?? 0)
          : (a.custodystream ?? "") < (b.custodystream ?? "")
            ? -1
            : 1,
      );
    // The serials the task holds now: its status and its Secret (none when it is gone or re-created).
    const abandoned = findAbandoned(events, ({ taskUid, namespace, name }) => {
      const c = tasks.get(`${namespace}/${name}`);
      const t = c ? (JSON.parse(c.json) as AgentTask) : undefined;
      const serials = new Set<string>();
      if (t && t.metadata.uid === taskUid) {
        if (t.status?.certificate?.serial) serials.add(t.status.certificate.serial);
        for (const held of [
          credentialIndex.get(`${namespace}/${name}`),
          heldAtTakeover.get(`${namespace}/${name}`),
        ])
          if (held) serials.add(held);
      }
      return serials;
    });
    for (const a of abandoned) {
      await writer.record(
        "dev.custody.task.issuance.abandoned",
        a.subject,
        {
          context: a.context,
          serial: a.serial,
          reason: "recorded as issued, but the writer stopped before the credential was delivered",
        },
        a.context.rootUid,
        deterministicEventId("abandoned", a.context.taskUid, a.serial),
      );
    }
    // A tail that did not verify stays unsettled: the next leader looks again, and verify reports it.
    await anchor.markSettled(
      [...names].filter((n) => !untrusted.has(n)),
      myStream,
    );
    log.info("predecessors' tails settled", {
      streams: [...names],
      events: events.length,
      abandoned: abandoned.length,
    });
  };

  const stopLeading = async () => {
    leading = false;
    metrics.leader(false);
    if (!stopping) {
      // The renew deadline passed: another replica may lead soon. Fence now,
      // without waiting for anything in flight: exit, and let the platform
      // restart this process as a standby.
      log.error("lost leadership; exiting so that no write of ours overlaps the next leader");
      process.exit(1);
    }
    // Drain in-flight reconciles, but never past the point where the lease
    // (no longer renewed) could pass to a standby: then exit instead.
    const drained = await Promise.race([
      queue.shutdown().then(() => true),
      new Promise<false>((r) =>
        setTimeout(() => r(false), Math.max(500, config.renewDeadlineMs - 1000)).unref(),
      ),
    ]);
    if (!drained) {
      log.error("in-flight work did not drain before the lease could pass; exiting");
      process.exit(1);
    }
    await recorder.close();
    // The final head, acknowledged: the next writer's stream starts anew.
    await anchorHead();
  };
  // The Lease on a connection of its own: on the shared ones, a renewal's
  // response can wait behind watch streams whose flow-control window a busy
  // event loop has not drained (a burst, a namespace of thousands of tasks
  // being deleted), and a renewal late past the deadline costs the leadership.
  const leaseRest = new KubeRest(credentials, { connections: 1, timeoutMs: config.renewDeadlineMs });
  const elector = config.leaderElection
    ? new LeaderElector({
        rest: leaseRest,
        namespace: config.namespace,
        name: config.leaseName,
        identity,
        leaseDurationMs: config.leaseDurationMs,
        renewDeadlineMs: config.renewDeadlineMs,
        retryPeriodMs: config.retryPeriodMs,
        log: log.child("leader-election"),
        onStartedLeading: (epoch) => startLeading(epoch).catch(exitAfterFailedTakeover),
        onStoppedLeading: stopLeading,
        onNewLeader: (holder) => log.info("leader", { holder, self: holder === identity }),
      })
    : undefined;
  if (elector) void elector.run();
  // Not awaited: the stream may wait for Kafka, and the signal handlers
  // below (which unregister the fail-closed webhooks) must be in place.
  else void startLeading(0).catch(exitAfterFailedTakeover);

  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info("stopping", { signal });
    // Before the lease is released: a successor registers its own endpoint,
    // which this removal must not delete.
    await unregisterOnExit();
    // Drains in-flight reconciles, closes the writer, then releases the lease
    // so that a standby takes over at once.
    if (elector) await elector.stop();
    else await stopLeading();
    await Promise.all([
      agentPolicies.stop(),
      clusterPolicies.stop(),
      tasks.stop(),
      secrets.stop(),
      bundleMaps.stop(),
      pods.stop(),
      admission.close(),
      identityEndpoint?.close(),
    ]);
    events.close();
    health.close();
    rest.close();
    leaseRest.close();
    process.exit(0);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
}

interface BundleMeta {
  metadata: { name: string; namespace: string; annotations?: Record<string, string> };
  /** The published revoked.txt. */
  revoked: string;
}

interface PodMeta {
  metadata: { name: string; namespace: string; uid: string; resourceVersion?: string };
  /** The task named by the opt-in label. */
  task: string;
  /** True when the pod mounts Custody's credential volume (the webhook injected it). */
  injected: boolean;
  containers: string[];
}

/** Findings that make an event untrustworthy in itself (not gaps or order, which a partial tail shows). */
const AUTHENTICITY_FINDINGS: ReadonlySet<string> = new Set([
  "malformed",
  "altered",
  "unknown-key",
  "bad-signature",
  "fork",
]);

type TailEvent = Parameters<typeof findAbandoned>[0][number] & {
  custodystream?: string;
  custodyseq?: number;
};

/** A tail record's event, or undefined when it is not JSON (verifyStreams reports those). */
function parseTailEvent(value: Buffer): TailEvent | undefined {
  try {
    return JSON.parse(value.toString("utf8")) as TailEvent;
  } catch {
    return undefined;
  }
}

function slimPod(p: PodMeta | Record<string, unknown>): PodMeta {
  if ("task" in p && "injected" in p) return p as PodMeta;
  const pod = p as {
    metadata: {
      name: string;
      namespace: string;
      uid: string;
      resourceVersion?: string;
      labels?: Record<string, string>;
    };
    spec?: {
      volumes?: Array<{ name?: string }>;
      containers?: Array<{ name: string; volumeMounts?: Array<{ name?: string }> }>;
    };
  };
  const injectedVolume = (pod.spec?.volumes ?? []).some((v) => v.name === SVID_VOLUME_NAME);
  return {
    metadata: {
      name: pod.metadata.name,
      namespace: pod.metadata.namespace,
      uid: pod.metadata.uid,
      ...(pod.metadata.resourceVersion ? { resourceVersion: pod.metadata.resourceVersion } : {}),
    },
    task: pod.metadata.labels?.[TASK_LABEL] ?? "",
    injected: injectedVolume,
    containers: (pod.spec?.containers ?? [])
      .filter((c) => (c.volumeMounts ?? []).some((m) => m.name === SVID_VOLUME_NAME))
      .map((c) => c.name),
  };
}

interface CompactTask {
  metadata: { name: string; namespace: string; resourceVersion?: string };
  /** spec.parentRef.name, for the parent → children index. */
  parent?: string;
  /** What children's chain rules read of this task: phase, generation, revocation, deletion. */
  state: string;
  /** The slimmed task as JSON text. */
  json: string;
}

/** Keeps what reconciling reads (drops e.g. last-applied-configuration) as one JSON string. */
function compactTask(t: AgentTask | CompactTask): CompactTask {
  if ("json" in t) return t;
  const m = t.metadata as AgentTask["metadata"] & { deletionTimestamp?: string; finalizers?: string[] };
  const annotations: Record<string, string> = {};
  for (const [k, v] of Object.entries(m.annotations ?? {}))
    if (k.startsWith("custody.dev/")) annotations[k] = v;
  const slim: AgentTask = {
    apiVersion: t.apiVersion,
    kind: t.kind,
    metadata: {
      name: m.name,
      ...(m.namespace ? { namespace: m.namespace } : {}),
      ...(m.uid ? { uid: m.uid } : {}),
      ...(m.generation !== undefined ? { generation: m.generation } : {}),
      ...(m.resourceVersion ? { resourceVersion: m.resourceVersion } : {}),
      ...(m.creationTimestamp ? { creationTimestamp: m.creationTimestamp } : {}),
      ...(m.deletionTimestamp ? { deletionTimestamp: m.deletionTimestamp } : {}),
      ...(m.finalizers ? { finalizers: m.finalizers } : {}),
      ...(m.labels ? { labels: m.labels } : {}),
      ...(Object.keys(annotations).length > 0 ? { annotations } : {}),
    } as AgentTask["metadata"],
    spec: t.spec,
    ...(t.status ? { status: t.status } : {}),
  };
  const parent = t.spec?.parentRef?.name;
  return {
    metadata: {
      name: m.name,
      namespace: m.namespace ?? "",
      ...(m.resourceVersion ? { resourceVersion: m.resourceVersion } : {}),
    },
    ...(parent ? { parent } : {}),
    // What policy granted is part of it: a parent narrowed by policy narrows what its children may hold.
    state: `${t.status?.phase ?? ""}|${m.generation ?? 0}|${t.status?.observedGeneration ?? ""}|${t.spec?.revoked === true}|${m.deletionTimestamp ?? ""}|${(t.status?.grantedScope ?? []).join(" ")}|${t.status?.grantedTtl ?? ""}`,
    json: JSON.stringify(slim),
  };
}

/** A `serial spiffeId notAfter` line of a revoked list, keyed by serial, while it has not expired. */
function liveRevokedLine(line: string, now: number): [serial: string, line: string] | undefined {
  const [serial, , notAfter] = line.trim().split(" ");
  return serial && /^[0-9a-f]+$/.test(serial) && Date.parse(notAfter ?? "") > now
    ? [serial, line.trim()]
    : undefined;
}

function deadlineOf(c: CompactTask): number {
  const d = (JSON.parse(c.json) as AgentTask).spec?.deadline;
  const t = d ? Date.parse(d) : Number.NaN;
  return Number.isNaN(t) ? Number.POSITIVE_INFINITY : t;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

main().catch((err: unknown) => {
  process.stderr.write(
    `${JSON.stringify({ time: new Date().toISOString(), level: "error", logger: "operator", msg: "fatal", error: errorText(err) })}\n`,
  );
  process.exit(1);
});
