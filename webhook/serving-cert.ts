// The admission webhook's own TLS certificate, minted from the Custody CA and
// renewed well before it expires. The API server trusts the CA through the
// webhook configurations' caBundle (registration.ts), so a re-minted leaf
// needs no change there; only a new CA does.
//
// Short-lived on purpose (24 h by default): the key lives only in this
// process's memory, never in a Secret, and each replica mints its own.
import { randomBytes } from "node:crypto";
import type { CertificateAuthority } from "../core/x509/ca.ts";
import { generateLeafKeyPair } from "../core/x509/mint.ts";
import { serialFromRandom } from "../core/x509/serial.ts";
import { mintServingCert } from "../core/x509/serving.ts";
import type { Logger } from "../shells/log.ts";
import { type Clock, systemClock } from "../shells/workqueue.ts";

export interface ServingCertificate {
  /** Leaf followed by the CA's intermediates: what the server presents. */
  readonly certPem: string;
  /** PKCS#8 PEM of the leaf's fresh P-256 key. */
  readonly keyPem: string;
  readonly serialHex: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly dnsNames: readonly string[];
  readonly ipAddresses: readonly string[];
}

export interface WebhookServingCertOptions {
  /** The signing CA; a function so that a rotated CA is picked up at the next mint. */
  ca: () => CertificateAuthority;
  /** The webhook Service: its `<name>.<namespace>.svc` names are always in the SAN (the API server dials those). */
  service: { name: string; namespace: string };
  /** More DNS names, e.g. for a clientConfig.url on a host name. */
  dnsNames?: readonly string[];
  /** IP SANs, e.g. 127.0.0.1 when the API server dials https://127.0.0.1:PORT. */
  ipAddresses?: readonly string[];
  /** Default 24 h. */
  validityMs?: number;
  /** Receives every newly minted certificate after the first (typically AdmissionServer.setCertificate). */
  onRotate: (cert: ServingCertificate) => void;
  log: Logger;
  clock?: Clock;
  /** Wait before retrying a failed renewal. Default 60 s. */
  retryMs?: number;
}

export const DEFAULT_SERVING_VALIDITY_MS = 24 * 3_600_000;
/**
 * notBefore is backdated this much so that an API server whose clock runs a
 * little behind ours does not see a certificate from the future.
 */
export const SERVING_BACKDATE_MS = 5 * 60_000;
/** setTimeout's ceiling (2^31-1 ms, ~24.8 days); longer delays are re-armed in steps. */
const MAX_TIMER_MS = 2_147_483_647;

export function serviceDnsNames(service: { name: string; namespace: string }): string[] {
  return [
    `${service.name}.${service.namespace}.svc`,
    `${service.name}.${service.namespace}.svc.cluster.local`,
  ];
}

export class WebhookServingCert {
  readonly #opts: WebhookServingCertOptions;
  readonly #clock: Clock;
  readonly #dnsNames: readonly string[];
  readonly #ipAddresses: readonly string[];
  #current: ServingCertificate;
  /** Clock time #current was minted: renewal is due half-way from here to its notAfter. */
  #currentMintedAt: number;
  #timer: unknown;
  #renewAt = 0;
  #stopped = true;

  /** Mints the first certificate at once (throws if the CA or the names are unusable). */
  constructor(opts: WebhookServingCertOptions) {
    this.#opts = opts;
    this.#clock = opts.clock ?? systemClock;
    this.#dnsNames = [...new Set([...serviceDnsNames(opts.service), ...(opts.dnsNames ?? [])])];
    this.#ipAddresses = [...new Set(opts.ipAddresses ?? [])];
    const first = this.#mint();
    this.#current = first.cert;
    this.#currentMintedAt = first.mintedAt;
  }

  get current(): ServingCertificate {
    return this.#current;
  }

  /** When the next renewal is due (epoch ms). */
  get renewAt(): number {
    return this.#renewAt;
  }

  /** Arms the renewal timer (at half the certificate's lifetime). */
  start(): void {
    if (!this.#stopped) return;
    this.#stopped = false;
    this.#schedule(this.#halfLife(this.#current, this.#currentMintedAt));
  }

  stop(): void {
    this.#stopped = true;
    if (this.#timer !== undefined) this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /**
   * Mints and publishes a new certificate now (e.g. right after the CA
   * rotated) and re-arms the timer. Throws if minting or onRotate fails,
   * keeping the current certificate.
   */
  rotateNow(): ServingCertificate {
    const { cert: next, mintedAt } = this.#mint();
    this.#opts.onRotate(next);
    this.#current = next;
    this.#currentMintedAt = mintedAt;
    this.#opts.log.info("webhook serving certificate renewed", {
      serial: next.serialHex,
      notAfter: next.notAfter.toISOString(),
    });
    if (!this.#stopped) this.#schedule(this.#halfLife(next, mintedAt));
    return next;
  }

  #mint(): { cert: ServingCertificate; mintedAt: number } {
    const ca = this.#opts.ca();
    const now = this.#clock.now();
    const validity = this.#opts.validityMs ?? DEFAULT_SERVING_VALIDITY_MS;
    const notBefore = new Date(Math.max(now - SERVING_BACKDATE_MS, ca.notBefore.getTime()));
    let notAfter = new Date(now + validity);
    if (notAfter.getTime() > ca.notAfter.getTime()) {
      // A CA near its end cannot issue past it; renewal at half-life keeps
      // retrying until the CA is rotated, and the log says why.
      notAfter = ca.notAfter;
      this.#opts.log.warn("webhook serving certificate clamped to the CA's notAfter", {
        caNotAfter: ca.notAfter.toISOString(),
      });
    }
    const keys = generateLeafKeyPair();
    const minted = mintServingCert({
      ca,
      subjectPublicKey: keys.publicKeySpki,
      dnsNames: this.#dnsNames,
      ipAddresses: this.#ipAddresses,
      serial: serialFromRandom(randomBytes(16)),
      notBefore,
      notAfter,
    });
    const cert: ServingCertificate = {
      certPem: minted.chainPem,
      keyPem: keys.privateKeyPem,
      serialHex: minted.serialHex,
      notBefore: minted.notBefore,
      notAfter: minted.notAfter,
      dnsNames: this.#dnsNames,
      ipAddresses: this.#ipAddresses,
    };
    return { cert, mintedAt: now };
  }

  /** Half-way from minting to notAfter (the backdated part of the validity is not lifetime). */
  #halfLife(cert: ServingCertificate, mintedAt: number): number {
    return mintedAt + Math.floor(Math.max(0, cert.notAfter.getTime() - mintedAt) / 2);
  }

  #schedule(at: number): void {
    if (this.#timer !== undefined) this.#clock.clearTimeout(this.#timer);
    this.#renewAt = at;
    const delay = Math.min(Math.max(0, at - this.#clock.now()), MAX_TIMER_MS);
    this.#timer = this.#clock.setTimeout(() => this.#fire(), delay);
  }

  #fire(): void {
    this.#timer = undefined;
    if (this.#stopped) return;
    if (this.#clock.now() < this.#renewAt) {
      this.#schedule(this.#renewAt); // a long wait split at setTimeout's ceiling
      return;
    }
    try {
      this.rotateNow();
    } catch (err) {
      const retryMs = this.#opts.retryMs ?? 60_000;
      this.#opts.log.error("webhook serving certificate renewal failed; retrying", {
        error: err,
        retryInMs: retryMs,
        currentNotAfter: this.#current.notAfter.toISOString(),
      });
      this.#schedule(this.#clock.now() + retryMs);
    }
  }
}
