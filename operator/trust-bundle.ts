// Publishes the trust bundle (PEM and SPIFFE bundle JSON) in a ConfigMap of
// one fixed name in every namespace that holds AgentTasks: pods can mount only
// ConfigMaps of their own namespace. Beside the roots it lists the revoked
// certificates of that namespace that have not expired yet (`revoked.txt`:
// serial, SPIFFE ID, notAfter per line), for Custody's decision points and
// any relying party that wants to refuse them. Writes happen once per
// namespace and whenever its content changes or the ConfigMap is edited or
// deleted.
import { createHash } from "node:crypto";
import { isAlreadyExists, type KubeRest } from "../shells/kube/rest.ts";
import type { Logger } from "../shells/log.ts";
import {
  COMPONENT_LABEL,
  configMapPath,
  MANAGED_BY,
  MANAGED_BY_LABEL,
  TRUST_BUNDLE_CONFIGMAP,
} from "./resources.ts";

export interface BundleContent {
  "ca.crt": string;
  "bundle.spiffe": string;
  /** Revoked serials and SPIFFE IDs, one per line, until their certificates expire (revocation issue). */
  "revoked.txt"?: string;
}

export const CONTENT_HASH_ANNOTATION = "custody.dev/content-sha256";
/** Which installation publishes the bundle (its issuing CA's fingerprint): another leaves it alone. */
export const INSTALLATION_ANNOTATION = "custody.dev/installation";

export class TrustBundlePublisher {
  readonly #rest: KubeRest;
  readonly #log: Logger;
  #content: BundleContent;
  #hash: string;
  /** Namespace → hash last written or confirmed there. */
  readonly #published = new Map<string, string>();
  readonly #inflight = new Map<string, Promise<void>>();
  /** The write queued behind the one in flight, shared by everyone who asked meanwhile. */
  readonly #next = new Map<string, Promise<void>>();
  /** Namespace → its content with revoked.txt, and that content's hash (computed once per change). */
  readonly #withRevoked = new Map<string, { content: BundleContent; hash: string }>();

  readonly #installation: string | undefined;

  constructor(rest: KubeRest, log: Logger, content: BundleContent, installation?: string) {
    this.#installation = installation;
    this.#rest = rest;
    this.#log = log;
    this.#content = content;
    this.#hash = hashOf(content);
  }

  /** Called from the ConfigMap watch: a deleted or edited bundle is rewritten on the next ensure. */
  observed(namespace: string, contentHash: string | undefined): void {
    if (contentHash === undefined || contentHash !== this.#published.get(namespace)) {
      this.#published.delete(namespace);
    }
  }

  /**
   * Replaces what every namespace's bundle holds besides its revoked list
   * (the JWT authorities rotate); ensure() publishes it.
   */
  setBase(content: BundleContent): boolean {
    const hash = hashOf(content);
    if (hash === this.#hash) return false;
    this.#content = content;
    this.#hash = hash;
    for (const [ns, entry] of this.#withRevoked) {
      const next = { ...content, "revoked.txt": entry.content["revoked.txt"] };
      this.#withRevoked.set(ns, { content: next, hash: hashOf(next) });
    }
    return true;
  }

  /** Sets the namespace's revoked certificates; ensure() publishes them. */
  setRevoked(namespace: string, lines: readonly string[]): void {
    if (lines.length === 0) {
      this.#withRevoked.delete(namespace);
      return;
    }
    const content = { ...this.#content, "revoked.txt": `${[...lines].sort().join("\n")}\n` };
    this.#withRevoked.set(namespace, { content, hash: hashOf(content) });
  }

  #contentFor(namespace: string): BundleContent {
    return this.#withRevoked.get(namespace)?.content ?? this.#content;
  }

  #hashFor(namespace: string): string {
    return this.#withRevoked.get(namespace)?.hash ?? this.#hash;
  }

  isCurrent(namespace: string): boolean {
    return this.#published.get(namespace) === this.#hashFor(namespace);
  }

  /**
   * Makes sure the namespace's bundle holds the content set so far: resolves
   * once a write that started after this call (or a later one) succeeded.
   * Concurrent callers share writes, and a caller waits for at most the
   * write in flight and the next one: content that keeps changing does not
   * keep an earlier caller waiting.
   */
  ensure(namespace: string): Promise<void> {
    if (this.isCurrent(namespace)) return Promise.resolve();
    const running = this.#inflight.get(namespace);
    if (!running) return this.#start(namespace);
    // The write in flight read its content before this call: the next one has ours.
    let next = this.#next.get(namespace);
    if (!next) {
      const after = (): Promise<void> | undefined => {
        this.#next.delete(namespace);
        return this.isCurrent(namespace) ? undefined : this.#start(namespace);
      };
      next = running.then(after, after);
      this.#next.set(namespace, next);
    }
    return next;
  }

  #start(namespace: string): Promise<void> {
    const p = this.#write(namespace).finally(() => this.#inflight.delete(namespace));
    this.#inflight.set(namespace, p);
    return p;
  }

  async #write(namespace: string): Promise<void> {
    const hash = this.#hashFor(namespace);
    const content = this.#contentFor(namespace);
    const body = {
      apiVersion: "v1",
      kind: "ConfigMap",
      metadata: {
        name: TRUST_BUNDLE_CONFIGMAP,
        namespace,
        labels: { [MANAGED_BY_LABEL]: MANAGED_BY, [COMPONENT_LABEL]: "trust-bundle" },
        annotations: {
          [CONTENT_HASH_ANNOTATION]: hash,
          ...(this.#installation ? { [INSTALLATION_ANNOTATION]: this.#installation } : {}),
        },
      },
      data: { ...content },
    };
    try {
      await this.#rest.post(configMapPath(namespace), body);
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
      await this.#rest.put(configMapPath(namespace, TRUST_BUNDLE_CONFIGMAP), body);
    }
    this.#published.set(namespace, hash);
    this.#log.info("trust bundle published", { namespace, contentSha256: hash });
  }
}

function hashOf(content: BundleContent): string {
  const h = createHash("sha256");
  for (const k of Object.keys(content).sort()) h.update(`${k}\0${content[k as keyof BundleContent]}\0`);
  return h.digest("hex");
}
