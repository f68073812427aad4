// Test harness: a scriptable upstream (the app's API) on loopback, the
// real `revalidate` binary on a temporary config, a TCP proxy that can cut
// and refuse connections, and polling with deadlines. Everything a test
// starts is stopped by `t.after`.

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { type IncomingMessage, type ServerResponse, createServer } from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import type { TestContext } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { EventSource } from "eventsource";

import type { EventSourceConstructor, StorageLike } from "../src/index.js";

/** The package's directory (this file runs from dist/test/). */
export const PACKAGE_DIR = fileURLToPath(new URL("../../", import.meta.url));

/** The daemon binary: `REVALIDATE_BIN`, else the workspace's debug build. */
export function daemonBin(): string {
  const bin = process.env["REVALIDATE_BIN"]
    ? path.resolve(process.env["REVALIDATE_BIN"])
    : path.resolve(PACKAGE_DIR, "../../target/debug/revalidate");
  if (!existsSync(bin)) {
    throw new Error(`no daemon binary at ${bin}: run \`cargo build -p revalidate-daemon\` or set REVALIDATE_BIN`);
  }
  return bin;
}

/** Polls `f` every 20 ms until it returns a truthy value (returned) or `withinMs` passes (throws, naming `what`). */
export async function eventually<T>(what: string, f: () => T | Promise<T>, withinMs = 10_000): Promise<NonNullable<T>> {
  const deadline = Date.now() + withinMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await f();
      if (v) return v as NonNullable<T>;
      last = v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${withinMs} ms waiting for: ${what} (last: ${String(last)})`);
    }
    await delay(20);
  }
}

/** Waits `ms` for something that must NOT happen (the caller checks afterwards). */
export const quietFor = (ms: number) => delay(ms);

// --- the upstream ---------------------------------------------------------

export interface UpstreamRequest {
  method: string;
  path: string;
  body: unknown;
}

/**
 * The app's API: `POST /actions/{action}` answers
 * `{"action", "params", "version"}` (the JSON body as `params`), the
 * version moving on `bump(action)`; `GET /health`. Counts calls per action.
 */
export class Upstream {
  readonly requests: UpstreamRequest[] = [];
  private readonly versions = new Map<string, number>();
  private readonly counts = new Map<string, number>();
  private readonly scripted = new Map<string, (params: unknown) => { status: number; body: unknown }>();
  private readonly server = createServer((req, res) => void this.handle(req, res));
  port = 0;

  static async start(t: TestContext): Promise<Upstream> {
    const up = new Upstream();
    await new Promise<void>((resolve) => up.server.listen(0, "127.0.0.1", resolve));
    up.port = (up.server.address() as net.AddressInfo).port;
    t.after(() => up.close());
    return up;
  }

  get baseUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** The next answers of `action` carry new data. */
  bump(action: string): void {
    this.versions.set(action, this.version(action) + 1);
  }

  version(action: string): number {
    return this.versions.get(action) ?? 0;
  }

  calls(action: string): number {
    return this.counts.get(action) ?? 0;
  }

  /** Answers `action` with `f(params)` instead. */
  script(action: string, f: (params: unknown) => { status: number; body: unknown }): void {
    this.scripted.set(action, f);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString("utf8");
    const url = new URL(req.url ?? "/", "http://upstream");
    if (url.pathname === "/health") {
      res.writeHead(200, { "content-type": "application/json" }).end('{"status":"ok"}');
      return;
    }
    const m = /^\/actions\/([^/]+)$/.exec(url.pathname);
    if (m === null || m[1] === undefined) {
      res.writeHead(404, { "content-type": "application/json" }).end('{"error":"no such path"}');
      return;
    }
    const action = decodeURIComponent(m[1]);
    let params: unknown = null;
    try {
      params = text === "" ? null : JSON.parse(text);
    } catch {
      params = text;
    }
    this.requests.push({ method: req.method ?? "", path: url.pathname, body: params });
    this.counts.set(action, this.calls(action) + 1);
    const scripted = this.scripted.get(action);
    const { status, body } = scripted
      ? scripted(params)
      : { status: 200, body: { action, params, version: this.version(action) } };
    res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.closeAllConnections();
      this.server.close(() => resolve());
    });
  }
}

// --- the daemon -----------------------------------------------------------

export interface DaemonOptions {
  /** `[staleness]` lines. Default: `item = "200ms"`. */
  staleness?: string;
  /** More `[server]` lines. */
  server?: string;
  /** More tables, appended. */
  extra?: string;
}

/** The real `revalidate serve`, on a temporary config, against `upstream`. */
export class Daemon {
  readonly logs: string[] = [];
  addr = "";

  private constructor(
    private readonly child: ChildProcess,
    private readonly dir: string,
  ) {}

  static config(upstream: Upstream, o: DaemonOptions = {}): string {
    return `
[server]
listen = "127.0.0.1:0"
${o.server ?? ""}

[upstream]
base_url = "${upstream.baseUrl}"
timeout = "2s"
health_path = "/health"
probe_interval = "200ms"

[refresh]
check_interval = "100ms"
max_concurrent_refreshes = 3
retry_interval = "300ms"
max_retries = 2
inactive_after = "1h"
fetch_timeout = "2s"
jitter = 0.0

[staleness]
${o.staleness ?? 'item = "200ms"'}

[actions."item.get"]
[actions."item.list"]
${o.extra ?? ""}
`;
  }

  static async start(t: TestContext, upstream: Upstream, o: DaemonOptions = {}): Promise<Daemon> {
    const dir = mkdtempSync(path.join(tmpdir(), "revalidate-ts-"));
    const config = path.join(dir, "revalidate.toml");
    writeFileSync(config, Daemon.config(upstream, o));
    const child = spawn(daemonBin(), ["serve", "--config", config], {
      env: { ...process.env, RUST_LOG: "info" },
      stdio: ["ignore", "ignore", "pipe"],
    });
    const d = new Daemon(child, dir);
    t.after(() => d.stop());
    let buffered = "";
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (chunk: string) => {
      buffered += chunk;
      let nl: number;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        d.logs.push(buffered.slice(0, nl));
        buffered = buffered.slice(nl + 1);
      }
    });
    d.addr = await eventually(
      "the daemon to log its address",
      () => {
        if (child.exitCode !== null) {
          throw new Error(`the daemon exited (${child.exitCode}):\n${d.logs.join("\n")}`);
        }
        const line = d.logs.find((l) => l.includes(" on http://"));
        return line?.slice(line.indexOf(" on http://") + 11).trim();
      },
      30_000,
    );
    return d;
  }

  get url(): string {
    return `http://${this.addr}`;
  }

  /** SIGTERM, then SIGKILL if it has not exited within 15 s. */
  async stop(): Promise<void> {
    const child = this.child;
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** The daemon's version of a query, read without counting a read: its `/v1/queries` entry. */
  async versionOf(key: string): Promise<number | undefined> {
    // The tests cache a handful of queries: one page of 1000 holds them all.
    const r = await fetch(`${this.url}/v1/queries?limit=1000`);
    const page = (await r.json()) as { queries: { key: string; version: number }[] };
    return page.queries.find((q) => q.key === key)?.version;
  }
}

// --- a TCP proxy ------------------------------------------------------------

/**
 * A TCP proxy in front of the daemon: `cut()` resets every connection,
 * `refusing = true` resets new ones at once, `target` may change (a
 * restarted daemon). Records the request lines it forwards.
 */
export class Proxy {
  refusing = false;
  readonly requestLines: string[] = [];
  private readonly sockets = new Set<net.Socket>();
  private readonly server: net.Server;
  port = 0;

  private constructor(public target: string) {
    this.server = net.createServer((client) => this.accept(client));
  }

  static async start(t: TestContext, target: string): Promise<Proxy> {
    const p = new Proxy(target);
    await new Promise<void>((resolve) => p.server.listen(0, "127.0.0.1", resolve));
    p.port = (p.server.address() as net.AddressInfo).port;
    t.after(() => p.close());
    return p;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Connections open now whose first request line starts with `prefix`. */
  open(prefix: string): number {
    let n = 0;
    for (const s of this.sockets) {
      const first = (s as net.Socket & { firstLine?: string }).firstLine;
      if (!s.destroyed && first?.startsWith(prefix)) n++;
    }
    return n;
  }

  private accept(client: net.Socket): void {
    if (this.refusing) {
      client.resetAndDestroy();
      return;
    }
    const [host, port] = this.target.split(":");
    const upstream = net.connect(Number(port), host);
    const tagged = client as net.Socket & { firstLine?: string };
    this.sockets.add(client);
    this.sockets.add(upstream);
    let head = "";
    client.on("data", (chunk: Buffer) => {
      head += chunk.toString("latin1");
      for (const m of head.matchAll(/^(GET|POST|PUT|DELETE|PATCH) (\S+) HTTP\/1\.1\r$/gm)) {
        const line = `${m[1]} ${m[2]}`;
        tagged.firstLine ??= line;
        this.requestLines.push(line);
      }
      head = head.slice(Math.max(0, head.lastIndexOf("\n") + 1));
      upstream.write(chunk);
    });
    upstream.on("data", (chunk: Buffer) => client.write(chunk));
    const end = () => {
      client.destroy();
      upstream.destroy();
      this.sockets.delete(client);
      this.sockets.delete(upstream);
    };
    client.on("close", end);
    upstream.on("close", end);
    client.on("error", end);
    upstream.on("error", end);
  }

  /** Resets every open connection. */
  cut(): void {
    for (const s of this.sockets) s.resetAndDestroy();
    this.sockets.clear();
  }

  close(): Promise<void> {
    this.cut();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

// --- the feed's EventSource, watched --------------------------------------

/** The `eventsource` package's EventSource, each instance kept (to check that a feed closes its own). */
export class WatchedEventSource extends EventSource {
  static readonly instances: WatchedEventSource[] = [];
  constructor(url: string | URL, init?: ConstructorParameters<typeof EventSource>[1]) {
    super(url, init);
    WatchedEventSource.instances.push(this);
  }
}

// A compile-time check: the package's EventSource (and so the platform's, of the same shape) fits.
export const NodeEventSource: EventSourceConstructor = EventSource;
export const Watched: EventSourceConstructor = WatchedEventSource;
// and the browser's (lib.dom) one too.
export const browserFits = (es: typeof globalThis.EventSource): EventSourceConstructor => es;

/** A `sessionStorage` stand-in: what a page keeps across a reload. */
export function memoryStorage(): StorageLike & { items: Map<string, string> } {
  const items = new Map<string, string>();
  return {
    items,
    getItem: (k) => items.get(k) ?? null,
    setItem: (k, v) => void items.set(k, v),
  };
}

/** The daemon's key of `action` with `params` (as `/v1/queries` and the feed name it). */
export function keyOf(action: string, params: unknown): string {
  return `${action}${JSON.stringify(params)}`;
}
