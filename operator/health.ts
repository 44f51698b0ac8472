// /livez, /readyz (ready once caches are synced and the CA is loaded) and
// /metrics, on a plain HTTP listener meant for the kubelet and Prometheus.
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";

export interface HealthChecks {
  /** Name → check; ready when every check returns true. */
  readonly ready: Record<string, () => boolean>;
  readonly live?: Record<string, () => boolean>;
  readonly metrics?: () => Promise<{ contentType: string; body: string }>;
}

export async function serveHealth(host: string, port: number, checks: HealthChecks): Promise<Server> {
  const run = (set: Record<string, () => boolean> | undefined) => {
    const failing = Object.entries(set ?? {})
      .filter(([, fn]) => {
        try {
          return !fn();
        } catch {
          return true;
        }
      })
      .map(([name]) => name);
    return failing;
  };
  const server = createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (path === "/livez" || path === "/readyz") {
      const failing = run(path === "/livez" ? checks.live : checks.ready);
      res.writeHead(failing.length === 0 ? 200 : 503, { "content-type": "text/plain" });
      res.end(failing.length === 0 ? "ok\n" : `not ready: ${failing.join(", ")}\n`);
      return;
    }
    if (path === "/metrics" && checks.metrics) {
      checks
        .metrics()
        .then(({ contentType, body }) => {
          res.writeHead(200, { "content-type": contentType });
          res.end(body);
        })
        .catch(() => {
          res.writeHead(500);
          res.end();
        });
      return;
    }
    res.writeHead(404);
    res.end();
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}

export function boundPort(server: Server): number {
  return (server.address() as AddressInfo).port;
}
