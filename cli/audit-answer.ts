// The answer `custody audit` gives for one task, built from the audit index
// alone (pure apart from reading the index): what it was allowed to do, what
// it did, and under whose authority. The stream is the evidence: nothing here
// comes from the cluster's current state.
import type { ChainStatus, IndexedEvent, Seal } from "./index.ts";

/**
 * A sealed event's own signature, or for an unsealed one the signature of the
 * seal covering it; `unsealed` when no seal covers it.
 */
export type SignatureCheck = "verified" | "bad-signature" | "unknown-key" | "unsealed" | "unchecked";

/** Checks one record's signature; absent when no public keys are available. */
export type SignatureVerifier = (record: Uint8Array, kid: string | null) => SignatureCheck;

export interface Principal {
  readonly kind: string;
  readonly name: string;
  readonly uid?: string;
}

export interface AuditedEvent {
  readonly time: string | null;
  readonly type: string | null;
  /** One line saying what happened. */
  readonly summary: string;
  readonly id: string | null;
  readonly stream: string | null;
  readonly seq: number | null;
  readonly partition: number;
  readonly offset: number;
  readonly chain: ChainStatus;
  readonly chainNote: string | null;
  readonly signature: SignatureCheck;
  /** For an unsealed event: the seq of the sealed event whose signature covers it, or why none does. */
  readonly sealedBy: number | null;
  readonly sealNote: string | null;
  /** Other records of the same event id (a repeat after a restart): stream and seq of each. */
  readonly repeats: ReadonlyArray<{ readonly stream: string | null; readonly seq: number | null }>;
  readonly data: Record<string, unknown> | null;
}

export interface Hop {
  readonly uid: string;
  readonly namespace: string | null;
  readonly name: string | null;
  /** False when the stream holds no event of this task (retention, or another topic). */
  readonly known: boolean;
  readonly scope: readonly string[] | null;
  readonly requester: string | null;
  readonly state: string | null;
}

export interface CertificateRecord {
  readonly serial: string;
  readonly spiffeId: string | null;
  readonly notBefore: string | null;
  readonly notAfter: string | null;
  readonly publicKeySha256: string | null;
  readonly issuedBy: "issued" | "renewed";
  readonly previousSerial: string | null;
  /** What became of it, in event order: revoked, expired, abandoned, and pods it was injected into. */
  readonly fate: readonly string[];
}

export interface TaskAudit {
  readonly task: {
    readonly uid: string;
    readonly namespace: string | null;
    readonly name: string | null;
    readonly agent: string | null;
    readonly spiffeId: string | null;
    readonly state: string | null;
  };
  readonly allowed: {
    readonly scope: readonly string[] | null;
    readonly ttl: string | null;
    readonly policy: {
      readonly version: string;
      readonly decision: string;
      readonly reasons: readonly string[];
    } | null;
    readonly contextDigest: string | null;
    readonly certificates: readonly CertificateRecord[];
  };
  readonly authority: {
    /** The human, group, service account or workflow at the root of the chain, as delegation.verified names it. */
    readonly principal: Principal | null;
    readonly requester: string | null;
    /** Root first, this task last. */
    readonly chain: readonly Hop[];
  };
  readonly events: readonly AuditedEvent[];
  readonly integrity: {
    readonly ok: boolean;
    readonly chain: Readonly<Partial<Record<ChainStatus, number>>>;
    readonly signatures: Readonly<Partial<Record<SignatureCheck, number>>>;
    readonly problems: readonly string[];
  };
}

export interface EventSource {
  eventsOfTask(uid: string): IndexedEvent[];
  sealOf(event: IndexedEvent): Seal | { readonly problem: string };
}

const TYPE_PREFIX = "dev.custody.task.";
export const shortType = (type: string | null): string =>
  type === null ? "(unreadable)" : type.startsWith(TYPE_PREFIX) ? type.slice(TYPE_PREFIX.length) : type;

interface Parsed {
  readonly row: IndexedEvent;
  readonly data: Record<string, unknown> | null;
}

const UTF8 = new TextDecoder();
function parse(row: IndexedEvent): Parsed {
  try {
    const value = JSON.parse(UTF8.decode(row.record)) as { data?: unknown };
    const data =
      typeof value.data === "object" && value.data !== null ? (value.data as Record<string, unknown>) : null;
    return { row, data };
  } catch {
    return { row, data: null };
  }
}

const s = (v: unknown): string | null => (typeof v === "string" ? v : null);
const strings = (v: unknown): string[] | null =>
  Array.isArray(v) && v.every((x) => typeof x === "string") ? (v as string[]) : null;
const o = (v: unknown): Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};

// The latest event of a type (events are in stream order).
const latest = (events: readonly Parsed[], type: string) =>
  [...events].reverse().find((e) => e.row.type === `${TYPE_PREFIX}${type}`);

/** Lifecycle state after the events, as the last state-changing event says. */
function stateOf(events: readonly Parsed[]): string | null {
  let state: string | null = null;
  for (const e of events) {
    const t = shortType(e.row.type);
    if (t === "requested") state ??= "requested";
    else if (t === "delegation.verified" && (state === null || state === "requested")) state = "verified";
    else if (t === "delegation.refused" || t === "denied") state = "denied";
    else if (t === "issued" || t === "renewed") state = "issued";
    else if (t === "revoked" || t === "expired" || t === "deleted") state = t;
  }
  return state;
}

function scopeOf(events: readonly Parsed[]): string[] | null {
  return (
    strings(latest(events, "delegation.verified")?.data?.scope) ??
    strings(latest(events, "requested")?.data?.scope)
  );
}

/** Dedupes by event id (a repeat after a restart is re-signed under another seq); keeps the first. */
function dedupe(events: readonly Parsed[]): Array<{ first: Parsed; repeats: Parsed[] }> {
  const byId = new Map<string, { first: Parsed; repeats: Parsed[] }>();
  const out: Array<{ first: Parsed; repeats: Parsed[] }> = [];
  for (const e of events) {
    const id = e.row.id;
    const known = id === null ? undefined : byId.get(id);
    // Only a sound repeat of the same type is the same event; anything else is shown on its own.
    if (known !== undefined && known.first.row.type === e.row.type && e.row.status !== "fork") {
      known.repeats.push(e);
      continue;
    }
    const entry = { first: e, repeats: [] };
    if (id !== null && known === undefined) byId.set(id, entry);
    out.push(entry);
  }
  return out;
}

export function buildAudit(index: EventSource, uid: string, verifier?: SignatureVerifier): TaskAudit {
  const parsed = index.eventsOfTask(uid).map(parse);
  const entries = dedupe(parsed);
  const own = entries.map((e) => e.first);
  const names = new Map<string, string>();
  const nameOf = (taskUid: string): string => {
    let name = names.get(taskUid);
    if (name === undefined) {
      const row = index.eventsOfTask(taskUid).find((r) => r.name !== null);
      name = row ? `${row.namespace}/${row.name}` : taskUid;
      names.set(taskUid, name);
    }
    return name;
  };

  const withContext = [...own].reverse().find((e) => e.row.chainUids.length > 0);
  const chainUids = withContext?.row.chainUids ?? [uid];
  const identity = own.find((e) => e.row.namespace !== null);
  const certificateEvents = own.filter((e) => ["issued", "renewed"].includes(shortType(e.row.type)));
  const lastCert = certificateEvents[certificateEvents.length - 1];

  // Certificates and what became of each.
  const certificates: CertificateRecord[] = [];
  const bySerial = new Map<string, CertificateRecord & { fate: string[] }>();
  for (const e of own) {
    const t = shortType(e.row.type);
    const d = e.data ?? {};
    if (t === "issued" || t === "renewed") {
      const c = o(d.certificate);
      const serial = s(c.serial);
      if (serial === null) continue;
      const record = {
        serial,
        spiffeId: s(c.spiffeId),
        notBefore: s(c.notBefore),
        notAfter: s(c.notAfter),
        publicKeySha256: s(c.publicKeySha256),
        issuedBy: t as "issued" | "renewed",
        previousSerial: s(d.previousSerial),
        fate: [] as string[],
      };
      bySerial.set(serial, record);
      certificates.push(record);
    } else if (t === "revoked") {
      for (const serial of strings(d.serials) ?? [])
        bySerial.get(serial)?.fate.push(`revoked ${e.row.time ?? ""}`.trim());
    } else if (t === "expired") {
      const serial = s(d.serial);
      if (serial !== null) bySerial.get(serial)?.fate.push(`expired ${s(d.notAfter) ?? ""}`.trim());
    } else if (t === "issuance.abandoned") {
      const serial = s(d.serial);
      if (serial !== null) bySerial.get(serial)?.fate.push("abandoned: never delivered");
    } else if (t === "injected") {
      const serial = s(d.serial);
      const pod = o(d.pod);
      if (serial !== null)
        bySerial.get(serial)?.fate.push(`injected into pod ${s(pod.namespace)}/${s(pod.name)}`);
    }
  }

  const policyEvent = latest(own, "policy.decided");
  const requested = latest(own, "requested");
  const verified = latest(own, "delegation.verified");

  const chain: Hop[] = chainUids.map((hopUid) => {
    const hopEvents =
      hopUid === uid ? own : dedupe(index.eventsOfTask(hopUid).map(parse)).map((e) => e.first);
    const named = hopEvents.find((e) => e.row.name !== null);
    if (hopEvents.length > 0) names.set(hopUid, `${named?.row.namespace}/${named?.row.name}`);
    return {
      uid: hopUid,
      namespace: named?.row.namespace ?? null,
      name: named?.row.name ?? null,
      known: hopEvents.length > 0,
      scope: scopeOf(hopEvents),
      requester: s(o(latest(hopEvents, "requested")?.data?.requester).username),
      state: stateOf(hopEvents),
    };
  });

  // The principal is the root task's delegator (a human, group, service
  // account or workflow), as its delegation.verified event names it; when the
  // root's events are gone, this task's own event names the same principal.
  const rootUid = chainUids[0] ?? uid;
  const rootEvents = rootUid === uid ? own : index.eventsOfTask(rootUid).map(parse);
  const principalOf = (e: Parsed | undefined): Principal | null => {
    const d = o(e?.data?.delegator);
    const kind = s(d.kind);
    const name = s(d.name);
    if (kind === null || name === null || kind === "agent") return null;
    const id = s(d.uid);
    return { kind, name, ...(id !== null ? { uid: id } : {}) };
  };
  const principal = principalOf(latest(rootEvents, "delegation.verified")) ?? principalOf(verified);

  // One check per sealing event: a batch's events share it.
  const sealChecks = new Map<string, SignatureCheck>();
  const events: AuditedEvent[] = entries.map(({ first, repeats }) => {
    const row = first.row;
    let signature: SignatureCheck = "unchecked";
    let sealedBy: number | null = null;
    let sealNote: string | null = null;
    if (verifier !== undefined && row.status !== "malformed" && row.status !== "altered") {
      if (row.sealed) signature = verifier(row.record, row.kid);
      else {
        const seal = index.sealOf(row);
        if ("problem" in seal) {
          signature = "unsealed";
          sealNote = seal.problem;
        } else {
          sealedBy = seal.seq;
          const key = `${row.stream}\u0000${seal.seq}`;
          let check = sealChecks.get(key);
          if (check === undefined) {
            check = verifier(seal.record, seal.kid);
            sealChecks.set(key, check);
          }
          signature = check;
        }
      }
    }
    return {
      time: row.time,
      type: row.type,
      summary: summarize(first, nameOf),
      id: row.id,
      stream: row.stream,
      seq: row.seq,
      partition: row.partition,
      offset: row.offset,
      chain: row.status,
      chainNote: row.note,
      signature,
      sealedBy,
      sealNote,
      repeats: repeats.map((r) => ({ stream: r.row.stream, seq: r.row.seq })),
      data: first.data,
    };
  });

  const chainCounts: Partial<Record<ChainStatus, number>> = {};
  const sigCounts: Partial<Record<SignatureCheck, number>> = {};
  const problems: string[] = [];
  for (const e of events) {
    chainCounts[e.chain] = (chainCounts[e.chain] ?? 0) + 1;
    sigCounts[e.signature] = (sigCounts[e.signature] ?? 0) + 1;
    const at = `${e.stream ?? "?"} seq ${e.seq ?? "?"} (partition ${e.partition} offset ${e.offset})`;
    if (e.chain !== "linked") problems.push(`${at}: ${e.chain}${e.chainNote ? `: ${e.chainNote}` : ""}`);
    if (e.signature === "bad-signature" || e.signature === "unknown-key")
      problems.push(`${at}: ${e.signature}${e.sealedBy !== null ? ` (of its seal, seq ${e.sealedBy})` : ""}`);
    if (e.signature === "unsealed") problems.push(`${at}: unsealed: ${e.sealNote}`);
  }
  if (verifier === undefined) problems.push("signatures not checked: no public keys (pass --keys FILE)");
  const ok = events.every(
    (e) =>
      e.chain === "linked" &&
      (e.signature === "verified" || (verifier === undefined && e.signature === "unchecked")),
  );

  return {
    task: {
      uid,
      namespace: identity?.row.namespace ?? null,
      name: identity?.row.name ?? null,
      agent: s(requested?.data?.agent),
      spiffeId: lastCert
        ? s(o(lastCert.data?.certificate).spiffeId)
        : (own.find((e) => e.row.spiffeId)?.row.spiffeId ?? null),
      state: stateOf(own),
    },
    allowed: {
      scope: scopeOf(own),
      ttl: s(requested?.data?.ttl),
      policy: policyEvent
        ? {
            version: s(policyEvent.data?.policyVersion) ?? "?",
            decision: s(policyEvent.data?.decision) ?? "?",
            reasons: strings(policyEvent.data?.reasons) ?? [],
          }
        : null,
      contextDigest: s(o(withContext?.data?.context).contextDigest),
      certificates,
    },
    authority: {
      principal,
      requester: s(o(requested?.data?.requester).username),
      chain,
    },
    events,
    integrity: { ok, chain: chainCounts, signatures: sigCounts, problems },
  };
}

function summarize(e: Parsed, nameOf: (uid: string) => string): string {
  const d = e.data ?? {};
  const list = (v: unknown) => (strings(v) ?? []).join(", ");
  switch (shortType(e.row.type)) {
    case "requested": {
      const r = o(d.requester);
      return `by ${s(r.username) ?? "?"}: agent ${s(d.agent) ?? "?"}, scope ${list(d.scope)}, ttl ${s(d.ttl) ?? "?"}`;
    }
    case "delegation.verified": {
      const p = o(d.delegator);
      return `on behalf of ${s(p.kind) ?? "?"} ${s(p.name) ?? "?"} (depth ${d.depth ?? "?"}), scope ${list(d.scope)}`;
    }
    case "delegation.refused":
      return `${s(d.reason) ?? "?"}: ${s(d.message) ?? ""}`;
    case "policy.decided":
      return `${s(d.decision) ?? "?"} by policy ${s(d.policyVersion) ?? "?"}${list(d.reasons) ? `: ${list(d.reasons)}` : ""}`;
    case "issued":
    case "renewed": {
      const c = o(d.certificate);
      const previous = s(d.previousSerial) ? `, replaces ${s(d.previousSerial)}` : "";
      return `serial ${s(c.serial) ?? "?"}${previous}, ${s(c.spiffeId) ?? "?"}, valid ${s(c.notBefore) ?? "?"} to ${s(c.notAfter) ?? "?"}`;
    }
    case "issuance.abandoned":
      return `serial ${s(d.serial) ?? "?"} never delivered: ${s(d.reason) ?? ""}`;
    case "injected": {
      const p = o(d.pod);
      return `into pod ${s(p.namespace) ?? "?"}/${s(p.name) ?? "?"} (uid ${s(p.uid) ?? "?"}), containers ${list(d.containers)}, serial ${s(d.serial) ?? "?"}`;
    }
    case "denied":
      return `at ${s(d.stage) ?? "?"}: ${s(d.reason) ?? "?"}: ${s(d.message) ?? ""}`;
    case "expired":
      return `serial ${s(d.serial) ?? "?"} expired at ${s(d.notAfter) ?? "?"}`;
    case "revoked": {
      const cascade = s(d.cascadeFromUid);
      const serials = list(d.serials);
      return `${serials ? `serials ${serials}` : "no certificate"}: ${s(d.reason) ?? ""}${cascade ? ` (cascade from ${nameOf(cascade)})` : ""}`;
    }
    case "deleted":
      return "the AgentTask was deleted";
    case "policy.revoked":
      return `serials ${list(d.serials)} revoked by policy ${s(d.policyVersion) ?? "?"}: ${list(d.reasons)}`;
    case "action.decided": {
      const r = o(d.resource);
      const c = o(d.caller);
      return `${s(d.decision) ?? "?"} ${s(d.action) ?? "?"} on ${s(r.type) ?? "?"} ${s(r.id) ?? "?"}, asked by ${s(c.kind) ?? "?"} ${s(c.name) ?? "?"} (${s(d.credential) ?? "?"}), policy ${s(d.policyVersion) ?? "?"}${list(d.reasons) ? `: ${list(d.reasons)}` : ""}`;
    }
    case "action.performed": {
      const r = o(d.resource);
      const by = o(d.reporter);
      const self = d.selfReported === true ? " (self-reported by the agent: a claim)" : "";
      return `${s(d.action) ?? "?"} on ${s(r.type) ?? "?"} ${s(r.id) ?? "?"}${s(d.outcome) ? `: ${s(d.outcome)}` : ""}, reported by ${s(by.kind) ?? "?"} ${s(by.name) ?? "?"}${self}`;
    }
    case "jwtsvid.issued": {
      const tokens = Array.isArray(d.tokens) ? d.tokens.map((t) => s(o(t).audience) ?? "?").join(", ") : "";
      return `JWT-SVIDs for ${tokens} (key ${s(d.kid) ?? "?"}), valid until ${s(d.expiresAt) ?? "?"}`;
    }
    case "token.exchanged":
      return `on-behalf-of token for ${s(d.audience) ?? "?"}, scope ${list(d.scope)}, sub ${s(d.subject) ?? "?"}, until ${s(d.expiresAt) ?? "?"}`;
    case "token.refused":
      return `token exchange refused: ${s(d.error) ?? "?"}: ${s(d.description) ?? ""}`;
    default:
      return e.row.status === "malformed" ? `unreadable record: ${e.row.note ?? ""}` : "";
  }
}

// ------------------------------------------------------------ text output

export function renderAudit(a: TaskAudit): string {
  const out: string[] = [];
  const label = (n: string | null, ns: string | null) => (n === null ? "(unnamed)" : `${ns}/${n}`);
  out.push(`AgentTask ${label(a.task.name, a.task.namespace)}  uid ${a.task.uid}`);
  if (a.task.spiffeId) out.push(`  identity   ${a.task.spiffeId}`);
  if (a.task.agent) out.push(`  agent      ${a.task.agent}`);
  out.push(`  state      ${a.task.state ?? "unknown"} (after its last event)`);

  out.push("", "under whose authority");
  const p = a.authority.principal;
  let indent = "  ";
  if (p) {
    out.push(
      `  ${p.kind} ${p.name}${p.uid ? `  uid ${p.uid}` : ""}   (the delegator, as delegation.verified records it)`,
    );
  } else {
    out.push("  (no delegation.verified event: the delegator is not recorded in the stream)");
  }
  a.authority.chain.forEach((hop, i) => {
    const self = i === a.authority.chain.length - 1;
    const what = hop.known
      ? `AgentTask ${label(hop.name, hop.namespace)}  uid ${hop.uid}`
      : `uid ${hop.uid} (no events in this topic)`;
    const details = [
      hop.scope ? `scope ${hop.scope.join(", ")}` : null,
      hop.requester ? `requested by ${hop.requester}` : null,
      hop.state && !self ? hop.state : null,
    ].filter((x) => x !== null);
    out.push(`${indent}└─ ${what}${self ? "   ← this task" : ""}`);
    if (details.length > 0) out.push(`${indent}   ${details.join("; ")}`);
    indent += "   ";
  });

  out.push("", "what it was allowed to do");
  out.push(`  scope          ${a.allowed.scope?.join(", ") ?? "(not recorded)"}`);
  if (a.allowed.ttl) out.push(`  ttl            ${a.allowed.ttl}`);
  out.push(
    `  policy         ${a.allowed.policy ? `${a.allowed.policy.decision} by ${a.allowed.policy.version}${a.allowed.policy.reasons.length ? `: ${a.allowed.policy.reasons.join("; ")}` : ""}` : "no policy decision recorded"}`,
  );
  if (a.allowed.contextDigest) out.push(`  chain digest   ${a.allowed.contextDigest}`);
  if (a.allowed.certificates.length === 0) out.push("  certificates   none issued");
  for (const c of a.allowed.certificates) {
    out.push(`  certificate    serial ${c.serial} (${c.issuedBy}), valid ${c.notBefore} to ${c.notAfter}`);
    if (c.publicKeySha256) out.push(`                 public key sha256 ${c.publicKeySha256}`);
    for (const f of c.fate) out.push(`                 ${f}`);
  }

  out.push("", "what it did");
  const width = Math.max(0, ...a.events.map((e) => shortType(e.type).length));
  for (const e of a.events) {
    const flags = [
      e.chain === "linked" ? null : e.chain.toUpperCase(),
      e.signature === "bad-signature"
        ? "BAD SIGNATURE"
        : e.signature === "unknown-key"
          ? "UNKNOWN KEY"
          : e.signature === "unsealed"
            ? "UNSEALED"
            : null,
      e.repeats.length > 0 ? `recorded ${e.repeats.length + 1} times` : null,
    ].filter((x) => x !== null);
    out.push(
      `  ${e.time ?? "(no time)"}  ${shortType(e.type).padEnd(width)}  ${e.summary}${flags.length ? `  [${flags.join(", ")}]` : ""}`,
    );
  }
  if (a.events.length === 0) out.push("  (no events)");

  out.push("", "integrity");
  const streams = [...new Set(a.events.map((e) => e.stream).filter((x) => x !== null))];
  const sig = a.integrity.signatures;
  const sigText =
    sig.verified === a.events.length
      ? "every signature verified"
      : `signatures: ${Object.entries(sig)
          .map(([k, n]) => `${n} ${k}`)
          .join(", ")}`;
  out.push(
    `  ${a.events.length} events in ${streams.join(", ") || "no stream"}; ${a.integrity.chain.linked ?? 0} hash-linked; ${sigText}`,
  );
  for (const problem of a.integrity.problems) out.push(`  ! ${problem}`);
  return `${out.join("\n")}\n`;
}
