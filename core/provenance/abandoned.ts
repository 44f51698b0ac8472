/**
 * Issuances that were recorded but never delivered. The seam records
 * `issued`/`renewed`, waits for Kafka's acknowledgement, then writes the
 * Secret: a crash in between leaves a serial in the stream that no workload
 * ever held. A new leader reads the previous writer's tail and records each
 * such serial as `issuance.abandoned` before it issues anew, so the stream
 * says what happened to every serial it announced. Pure: the caller reads the
 * events and says which serial each task holds now.
 */

interface Context {
  taskUid: string;
  namespace: string;
  name: string;
  chainUids: string[];
  rootUid: string;
  contextDigest: string;
}

interface TailEvent {
  type: string;
  subject?: string;
  data?: {
    context?: Context;
    certificate?: { serial?: string };
    previousSerial?: string;
    serial?: string;
    serials?: string[];
  };
}

export interface Abandoned {
  context: Context;
  subject: string;
  serial: string;
}

/**
 * `events` in stream order per task (one task's events share a partition
 * key, the chain root). `heldSerials(context)` gives the serials the task's
 * status and credential Secret hold now (empty when the task is gone).
 */
export function findAbandoned(
  events: readonly TailEvent[],
  heldSerials: (context: Context) => ReadonlySet<string>,
): Abandoned[] {
  const open = new Map<string, Map<string, { context: Context; subject: string }>>();
  const settle = (uid: string, serial: string | undefined) => {
    if (serial) open.get(uid)?.delete(serial);
  };
  for (const e of events) {
    const context = e.data?.context;
    if (!context) continue;
    const uid = context.taskUid;
    switch (e.type) {
      case "dev.custody.task.issued":
      case "dev.custody.task.renewed": {
        // A renewal replaced a serial that was delivered (it was in status).
        if (e.type === "dev.custody.task.renewed") settle(uid, e.data?.previousSerial);
        const serial = e.data?.certificate?.serial;
        if (!serial) break;
        // One key is reconciled at a time and the seam writes the Secret
        // before the reconcile ends: a later issuance means the earlier one
        // was delivered, or (a failed Secret write) was recorded abandoned
        // there and then. Only a task's last announcement can be open.
        const serials = new Map<string, { context: Context; subject: string }>();
        open.set(uid, serials);
        serials.set(serial, { context, subject: e.subject ?? `${context.namespace}/${context.name}` });
        break;
      }
      case "dev.custody.task.revoked":
        for (const s of e.data?.serials ?? []) settle(uid, s);
        break;
      case "dev.custody.task.expired":
      case "dev.custody.task.issuance.abandoned":
        settle(uid, e.data?.serial);
        break;
    }
  }
  const abandoned: Abandoned[] = [];
  for (const serials of open.values()) {
    const first = serials.values().next().value;
    if (!first) continue;
    const held = heldSerials(first.context);
    for (const [serial, at] of serials) if (!held.has(serial)) abandoned.push({ ...at, serial });
  }
  return abandoned;
}
