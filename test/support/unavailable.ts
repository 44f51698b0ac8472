// A CRD installed moments ago can answer 503 for a short while: retry a call
// while it does (any other error is the caller's). Works for KubeRest's
// KubeApiError and client-node's ApiException alike (both carry `code`).
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
      if ((err as { code?: number }).code !== 503 || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, delayMs));
      onRetry?.();
    }
  }
}
