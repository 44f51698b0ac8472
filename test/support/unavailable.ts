// A CRD installed moments ago can answer 503 for a short while, and during a
// local failover the fail-closed webhook is unreachable until the new leader
// registers its own endpoint (in a cluster the Service reaches a standby at
// once): retry a call while either lasts (any other error is the caller's).
// Works for KubeRest's KubeApiError and client-node's ApiException alike.
export async function retryWhileUnavailable<T>(
  call: () => Promise<T>,
  {
    timeoutMs = 20_000,
    delayMs = 100,
    onRetry,
  }: { timeoutMs?: number; delayMs?: number; onRetry?: () => void } = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await call();
    } catch (err) {
      if (!transient(err) || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, delayMs));
      onRetry?.();
    }
  }
}

function transient(err: unknown): boolean {
  const e = err as { code?: number; message?: string; body?: unknown };
  if (e.code === 503) return true;
  const text = `${e.message ?? ""} ${typeof e.body === "string" ? e.body : JSON.stringify(e.body ?? "")}`;
  // The API server also drops its webhook connections now and then (seen:
  // "http2: client connection force closed via ClientConn.Close" while other
  // webhook configurations churned): a client retries, as controllers do.
  return (
    e.code === 500 &&
    /failed calling webhook "agenttasks\.custody\.dev"/.test(text) &&
    /connect: connection refused|force closed|connection reset|EOF|context deadline exceeded|Client\.Timeout/.test(
      text,
    )
  );
}
