// The browser example page (crates/revalidate-web-example) in headless
// Chromium, against the demo API:
//
//   node example.mjs <page-url> <page-dir> <screenshot-prefix>
//
// 1. live: every query gets data and the short-lived ones are refreshed;
// 2. offline (the context's network cut): the page hears it, refreshes
//    stop, the data stays;
// 3. reload while offline (the page's own files are served by Playwright
//    from <page-dir>, the API stays unreachable): the data comes from
//    IndexedDB, nothing reaches the API;
// 4. online again: the page catches up (new versions, fresh data).
//
// Exit status: 0 when every check passed, 1 when a check failed, 2 on a usage
// or setup error. Run by `scripts/test wasm`; needs `npm ci` here and
// Chromium at /usr/bin/chromium (or $CHROMIUM).

import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { LAUNCH_BUDGET_MS, launchChromium } from "./launch.mjs";

// The offline reload serves the page from Playwright's interception, which
// Chromium counts as a public origin; Local Network Access would then hold
// its requests to the loopback API for a permission prompt.
const EXTRA_ARGS = ["--disable-features=LocalNetworkAccessChecks"];
const QUERIES = 9;
const OVERALL_TIMEOUT_MS = LAUNCH_BUDGET_MS + 90_000;
const OFFLINE_WATCH_MS = 4_000;

class CheckFailed extends Error {}
class SetupFailed extends Error {}

const [url, pageDir, shots] = process.argv.slice(2);
if (!url || !pageDir || !shots || process.argv.length > 5) {
  console.error("usage: node example.mjs <page-url> <page-dir> <screenshot-prefix>");
  process.exit(2);
}

let browser = null;
const pageErrors = [];
const consoleLines = [];
const watchdog = setTimeout(async () => {
  console.error(`example check: FAILED: gave up after ${OVERALL_TIMEOUT_MS} ms`);
  if (browser) await browser.close().catch(() => {});
  process.exit(2);
}, OVERALL_TIMEOUT_MS);

// What the page shows: per query its version, staleness and whether it has
// data; the network state; what hydrate restored; requests sent to the API.
function snapshot() {
  const rows = {};
  for (const tr of document.querySelectorAll("#queries tbody tr[data-key]")) {
    rows[tr.getAttribute("data-key")] = {
      version: Number(tr.getAttribute("data-version")),
      stale: tr.getAttribute("data-stale") === "true",
      data: tr.getAttribute("data-has-data") === "true",
    };
  }
  return {
    rows,
    online: document.querySelector("#network")?.getAttribute("data-online") ?? null,
    restored: Number(document.querySelector("#store")?.getAttribute("data-restored") ?? -2),
    store: document.querySelector("#store")?.textContent ?? "",
    fetches: Number(document.querySelector("#fetches")?.getAttribute("data-count") ?? -1),
    log: document.querySelector("#log")?.textContent ?? "",
  };
}

const withData = (s) => Object.values(s.rows).filter((r) => r.data).length;
const versions = (s) => Object.fromEntries(Object.entries(s.rows).map(([k, r]) => [k, r.version]));
const newer = (before, after) =>
  Object.keys(after.rows).filter((k) => before.rows[k] && after.rows[k].version > before.rows[k].version);

async function waitFor(page, what, predicate, arg, timeout) {
  try {
    await page.waitForFunction(predicate, arg, { timeout, polling: 100 });
  } catch {
    const s = await page.evaluate(snapshot).catch(() => null);
    throw new CheckFailed(
      `${what} (within ${timeout} ms); page: ${JSON.stringify(s && { ...s, log: s.log.slice(0, 600) })}` +
        `; page errors: ${pageErrors.join(" | ") || "none"}; console: ${consoleLines.slice(-8).join(" | ")}`,
    );
  }
}

async function main() {
  browser = await launchChromium(EXTRA_ARGS).catch((e) => {
    throw new SetupFailed(e.message);
  });
  const context = await browser.newContext({ viewport: { width: 1300, height: 1000 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on("crash", () => pageErrors.push("the page crashed"));

  const origin = new URL(url).origin;
  const api = new URL(url).searchParams.get("api");
  // Requests to the API that got an answer (preflights included); those cut
  // off by the offline network fail instead.
  let apiRequests = 0;
  page.on("requestfinished", (r) => {
    if (r.url().startsWith(api)) apiRequests += 1;
  });

  // 1. Live.
  const response = await page.goto(url, { waitUntil: "domcontentloaded" }).catch((e) => {
    throw new SetupFailed(`could not load ${url}: ${e.message}`);
  });
  if (!response?.ok()) throw new SetupFailed(`GET ${url} answered ${response?.status()}`);
  await waitFor(
    page,
    `every query shows data`,
    (n) => document.querySelectorAll("#queries tbody tr[data-has-data=true]").length >= n,
    QUERIES,
    20_000,
  );
  const live = await page.evaluate(snapshot);
  await waitFor(
    page,
    "a refresh gives a query a newer version",
    (v) =>
      [...document.querySelectorAll("#queries tbody tr[data-key]")].some(
        (tr) => Number(tr.getAttribute("data-version")) > (v[tr.getAttribute("data-key")] ?? 1e9),
      ),
    versions(live),
    10_000,
  );
  // Let a flush window pass, so that IndexedDB has the latest versions.
  await page.waitForTimeout(1_000);
  await page.screenshot({ path: `${shots}-1-live.png`, fullPage: true });

  // 2. Offline: refreshes stop, the data stays.
  await context.setOffline(true);
  await waitFor(page, "the page hears it is offline", () => document.querySelector("#network")?.getAttribute("data-online") === "false", null, 5_000);
  const offlineAt = await page.evaluate(snapshot);
  const requestsAtOffline = apiRequests;
  await page.waitForTimeout(OFFLINE_WATCH_MS);
  const offline = await page.evaluate(snapshot);
  const failures = [];
  if (newer(offlineAt, offline).length) failures.push(`offline, refreshes went on: ${newer(offlineAt, offline).join(", ")}`);
  if (offline.fetches !== offlineAt.fetches) failures.push(`offline, the engine fetched ${offline.fetches - offlineAt.fetches} times`);
  if (withData(offline) < QUERIES) failures.push(`offline, only ${withData(offline)} queries kept their data`);
  if (!Object.values(offline.rows).some((r) => r.stale)) failures.push("offline for 4 s, yet nothing is stale");
  if (!offline.log.includes("offline")) failures.push("the decision log does not say offline");
  await page.screenshot({ path: `${shots}-2-offline.png`, fullPage: true });

  // 3. Reload while offline: the page's files come from disk (no service
  // worker here), the API stays unreachable, the data from IndexedDB.
  const types = { html: "text/html", js: "text/javascript", wasm: "application/wasm" };
  await page.route(`${origin}/**`, (route) => {
    const path = new URL(route.request().url()).pathname.replace(/^\/$/, "/index.html");
    const file = join(pageDir, path);
    if (!existsSync(file)) return route.fulfill({ status: 404, body: "" });
    return route.fulfill({ status: 200, body: readFileSync(file), contentType: types[path.split(".").pop()] ?? "application/octet-stream" });
  });
  const restoredFrom = versions(offline);
  await page.reload({ waitUntil: "domcontentloaded" });
  await waitFor(
    page,
    "after the offline reload, every query shows data restored from IndexedDB",
    (n) =>
      Number(document.querySelector("#store")?.getAttribute("data-restored")) >= n &&
      document.querySelectorAll("#queries tbody tr[data-has-data=true]").length >= n,
    QUERIES,
    15_000,
  );
  await page.waitForTimeout(2_000);
  const reloaded = await page.evaluate(snapshot);
  const lower = Object.keys(restoredFrom).filter((k) => (reloaded.rows[k]?.version ?? 0) < restoredFrom[k] - 1);
  if (lower.length) failures.push(`restored versions older than the last flush: ${lower.join(", ")}`);
  if (apiRequests !== requestsAtOffline) failures.push(`${apiRequests - requestsAtOffline} requests reached the API while offline`);
  if (withData(reloaded) < QUERIES) failures.push(`after the reload only ${withData(reloaded)} queries have data`);
  await page.screenshot({ path: `${shots}-3-reloaded-offline.png`, fullPage: true });

  // 4. Online: catch up.
  await context.setOffline(false);
  await waitFor(page, "the page goes online again", () => document.querySelector("#network")?.getAttribute("data-online") === "true", null, 10_000);
  const staleAtReload = Object.values(reloaded.rows).filter((r) => r.stale).length;
  if (staleAtReload === 0) failures.push("after the offline reload nothing was stale, so no catch-up can be seen");
  await waitFor(
    page,
    "the page catches up: every query fresh again, and a newer version",
    (v) => {
      const rows = [...document.querySelectorAll("#queries tbody tr[data-key]")];
      const bumped = rows.filter((tr) => Number(tr.getAttribute("data-version")) > (v[tr.getAttribute("data-key")] ?? 1e9));
      return rows.length >= 9 && rows.every((tr) => tr.getAttribute("data-stale") === "false") && bumped.length >= 1;
    },
    versions(reloaded),
    15_000,
  );
  const back = await page.evaluate(snapshot);
  if (apiRequests === requestsAtOffline) failures.push("online again, yet no request reached the API");
  if (!back.log.includes("online")) failures.push("the decision log does not say online");
  await page.screenshot({ path: `${shots}-4-online.png`, fullPage: true });

  if (pageErrors.length) failures.push(`page errors: ${pageErrors.join(" | ")}`);

  const summary = {
    ok: failures.length === 0,
    live: { queries: withData(live), fetches: live.fetches },
    offline: { stale: Object.values(offline.rows).filter((r) => r.stale).length, fetches_while_offline: offline.fetches - offlineAt.fetches },
    reloaded: { restored: reloaded.restored, store: reloaded.store },
    online: { stale_at_reload: staleAtReload, newer: newer(reloaded, back).length, api_requests: apiRequests - requestsAtOffline },
    failures,
  };
  console.log(JSON.stringify(summary, null, 2));
  if (failures.length) throw new CheckFailed(failures.join("; "));
}

try {
  await main();
  console.error("example check: passed");
  clearTimeout(watchdog);
  await browser?.close();
  process.exit(0);
} catch (e) {
  console.error(`example check: FAILED: ${e.message}`);
  clearTimeout(watchdog);
  await browser?.close().catch(() => {});
  process.exit(e instanceof CheckFailed ? 1 : 2);
}
