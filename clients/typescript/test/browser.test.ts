// The client in a real browser (headless Chromium): the platform's own
// EventSource and sessionStorage, the daemon behind the app's origin at
// /revalidate. A lost connection and a page reload each resume with
// ?last_event_id= and get exactly the missed events, their data equal to
// a fresh read.

import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { type IncomingMessage, type ServerResponse, createServer, request } from "node:http";
import type net from "node:net";
import path from "node:path";
import { type TestContext, test } from "node:test";

import { chromium } from "playwright-core";

import { Daemon, PACKAGE_DIR, Upstream, eventually, keyOf, quietFor } from "./support.js";

const CHROMIUM = process.env["CHROMIUM"] ?? "/usr/bin/chromium";

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>revalidate client</title>
<script type="module">
  import { createClient } from "/pkg/index.js";
  const revalidate = createClient({ baseUrl: "/revalidate", reconnect: { initialDelayMs: 50, maxDelayMs: 200 } });
  window.revalidate = revalidate;
  window.changes = [];
  window.opens = 0;
  window.errors = 0;
  window.stop = revalidate.events((c) => window.changes.push(c), {
    includeData: true,
    onOpen: () => window.opens++,
    onError: () => window.errors++,
  });
</script>
`;

/**
 * The app's origin: the page, the package's built modules under /pkg/,
 * and the daemon proxied under /revalidate/ (streams included).
 * `refusing` answers the daemon's paths with 503; `cut()` ends the open
 * proxied answers.
 */
async function appServer(t: TestContext, daemon: Daemon) {
  const requests: string[] = [];
  const open = new Set<ServerResponse>();
  const state = { refusing: false };
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const url = req.url ?? "/";
    requests.push(`${req.method} ${url}`);
    if (url === "/") {
      res.writeHead(200, { "content-type": "text/html" }).end(PAGE);
    } else if (url.startsWith("/pkg/") && /^\/pkg\/[a-z]+\.js$/.test(url)) {
      const file = path.join(PACKAGE_DIR, "dist/src", url.slice(5));
      if (!existsSync(file)) return void res.writeHead(404).end();
      res.writeHead(200, { "content-type": "text/javascript" }).end(readFileSync(file));
    } else if (url.startsWith("/revalidate/")) {
      if (state.refusing) return void res.writeHead(503).end();
      const [host, port] = daemon.addr.split(":");
      const forward = request(
        { host, port: Number(port), method: req.method, path: url.slice("/revalidate".length), headers: { ...req.headers, host: daemon.addr } },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          res.flushHeaders(); // an event stream opens before its first event
          answer.pipe(res);
        },
      );
      forward.on("error", () => res.destroy());
      open.add(res);
      res.on("close", () => {
        open.delete(res);
        forward.destroy();
      });
      req.pipe(forward);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    requests,
    state,
    cut: () => {
      for (const r of open) r.destroy();
    },
  };
}

type PageChange = { id?: string; version: number; hasData: boolean; data?: unknown; params: unknown };
declare const window: {
  revalidate: { get(action: string, params: unknown): Promise<unknown> };
  changes: PageChange[];
  opens: number;
  errors: number;
  /** The id of the bump's change, once the test knows it. */
  first: number;
};

/** Bumps `action` upstream and waits until the daemon holds a newer version of `key`. */
async function change(up: Upstream, d: Daemon, action: string, key: string): Promise<number> {
  const before = (await d.versionOf(key)) ?? 0;
  up.bump(action);
  return eventually(`the daemon to refresh ${key}`, async () => {
    const v = (await d.versionOf(key)) ?? 0;
    return v > before ? v : undefined;
  });
}

test("in Chromium: a lost connection and a page reload each resume with ?last_event_id= and exactly the missed events", { timeout: 180_000 }, async (t) => {
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install chromium, or set CHROMIUM`);
  const up = await Upstream.start(t);
  const d = await Daemon.start(t, up);
  const app = await appServer(t, d);
  const key = keyOf("item.get", { id: 1 });
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
    // A first start on a cold, busy machine can take tens of seconds (CI once
    // saw 18 s before Chromium printed anything); the test's own budget covers it.
    timeout: 90_000,
  });
  t.after(() => browser.close());
  const page = await browser.newPage();
  const pageErrors: string[] = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  const wait = (what: string, f: () => boolean) =>
    page.waitForFunction(f, undefined, { timeout: 15_000, polling: 20 }).catch((e: unknown) => {
      throw new Error(`in the page, waiting for ${what}: ${String(e)}`);
    });
  const changes = () => page.evaluate(() => window.changes);
  const read = () => page.evaluate(() => window.revalidate.get("item.get", { id: 1 }));

  await page.goto(`${app.url}/`);
  await wait("the feed to open", () => window.opens === 1);
  await read();
  up.bump("item.get");
  // The first fetch's own change may reach the page too: its event can beat
  // the read's answer, which the client otherwise uses to skip it. The
  // bump's change is the one whose body carries the bumped version.
  const bumped = (c: PageChange) => (c.data as { version?: number } | undefined)?.version === 1;
  await wait("the bump's change", () =>
    window.changes.some((c) => (c.data as { version?: number } | undefined)?.version === 1),
  );
  const bump = (await changes()).find(bumped);
  const first = Number(bump?.id);
  await page.evaluate((f) => {
    window.first = f;
  }, first);
  assert.deepEqual(bump?.data, await read(), "the body equals a fresh read");
  assert.equal(
    await page.evaluate(() => sessionStorage.getItem("revalidate:last-event-id /revalidate")),
    String(first),
    "the id is in sessionStorage",
  );

  // The connection is lost, and reconnections fail for a while.
  app.state.refusing = true;
  app.cut();
  await wait("the feed to notice", () => window.errors > 0);
  await change(up, d, "item.get", key);
  await change(up, d, "item.get", key);
  app.state.refusing = false;
  await wait("the missed changes", () => window.changes.filter((c) => Number(c.id) >= window.first).length >= 3);
  await quietFor(400);
  let seen = (await changes()).filter((c) => Number(c.id) >= first);
  assert.deepEqual(
    seen.map((c) => Number(c.id)),
    [first, first + 1, first + 2],
    "exactly the missed events, once each",
  );
  const fresh = await read();
  assert.deepEqual(seen[2]?.data, fresh);
  assert.ok(app.requests.includes(`GET /revalidate/v1/events?last_event_id=${first}&include=data`), app.requests.join("\n"));

  // The page goes away; two changes happen; it is loaded again in the same tab.
  await page.goto("about:blank");
  await change(up, d, "item.get", key);
  const latest = await change(up, d, "item.get", key);
  await page.goto(`${app.url}/`);
  await wait("the changes missed while away", () => window.changes.length >= 2);
  await quietFor(400);
  seen = await changes();
  assert.deepEqual(
    seen.map((c) => Number(c.id)),
    [first + 3, first + 4],
    "exactly the missed events",
  );
  assert.equal(seen[1]?.version, latest);
  const now = await read();
  assert.ok(seen.every((c) => c.hasData && JSON.stringify(c.data) === JSON.stringify(now)), "bodies equal a fresh read");
  assert.ok(app.requests.includes(`GET /revalidate/v1/events?last_event_id=${first + 2}&include=data`), app.requests.join("\n"));
  assert.deepEqual(pageErrors, []);
});
