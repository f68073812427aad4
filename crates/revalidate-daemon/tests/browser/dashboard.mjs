// End-to-end check of the revalidate dashboard in headless Chromium.
//
//   node dashboard.mjs <dashboard-url> <screenshot.png>
//
// Opens the dashboard, waits for the live stream and the queries table, then
// watches it for a few seconds and checks that it updates in place: the tick
// time advances, rows change, the page is never reloaded, and no script error
// happens. Saves a full-page screenshot and prints a JSON summary on stdout.
//
// Exit status: 0 when every check passed, 1 when a check failed, 2 on a usage
// or setup error (no browser, page unreachable, ...). Driven by
// crates/revalidate-daemon/tests/browser.rs; needs `npm ci` in this directory
// and a Chromium at /usr/bin/chromium (or $CHROMIUM).

import { existsSync, statSync } from "node:fs";
import { LAUNCH_BUDGET_MS, launchChromium } from "./launch.mjs";

const READY_TIMEOUT_MS = 20_000; // live stream + enough rows
const OBSERVE_MS = 4_000; // how long the page is watched for live updates
const MIN_ROWS = 8;
const OVERALL_TIMEOUT_MS = LAUNCH_BUDGET_MS + 50_000; // hard stop for the whole script
const CLOSE_TIMEOUT_MS = 5_000;

// Console errors that are the browser's own reports of network trouble (an
// SSE reconnect, a failed request), not bugs in the page.
const NETWORK_NOISE = [
  /^Failed to load resource\b/i,
  /\bnet::ERR_[A-Z_]+/,
  /\bEventSource\b/,
];

class CheckFailed extends Error {}
class SetupFailed extends Error {}

const started = Date.now();
const [url, screenshotPath] = process.argv.slice(2);
if (!url || !screenshotPath || process.argv.length > 4) {
  console.error("usage: node dashboard.mjs <dashboard-url> <screenshot.png>");
  process.exit(2);
}

let browser = null;

async function closeBrowser() {
  if (!browser) return;
  const b = browser;
  browser = null;
  await Promise.race([
    b.close().catch(() => {}),
    new Promise((resolve) => setTimeout(resolve, CLOSE_TIMEOUT_MS).unref()),
  ]);
}

// Never hang: whatever is stuck, give up after OVERALL_TIMEOUT_MS.
const watchdog = setTimeout(async () => {
  console.error(`dashboard check: FAILED: gave up after ${OVERALL_TIMEOUT_MS} ms (something hung)`);
  await closeBrowser();
  process.exit(2);
}, OVERALL_TIMEOUT_MS);

// What the page shows right now: the tick time and, per row, the texts the
// live updates change.
function snapshot() {
  const lu = document.querySelector("#last-update");
  const rows = {};
  for (const tr of document.querySelectorAll("#queries tbody tr[data-key]")) {
    rows[tr.getAttribute("data-key")] = {
      status: tr.getAttribute("data-status"),
      age: tr.querySelector(".agebar .lbl")?.textContent ?? null,
      refreshed: tr.querySelector("td.refreshed")?.textContent ?? null,
    };
  }
  return {
    now: Number(lu?.getAttribute("data-now")),
    connection: document.body.getAttribute("data-connection"),
    online: document.querySelector("#network-state")?.getAttribute("data-online") ?? null,
    marker: window.__loadedOnce ?? null,
    rows,
  };
}

async function main() {
  try {
    browser = await launchChromium();
  } catch (e) {
    throw new SetupFailed(e.message);
  }
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);

  const pageErrors = [];
  const consoleErrors = [];
  const networkNoise = [];
  const navigations = [];
  page.on("pageerror", (e) => pageErrors.push(String(e && e.stack ? e.stack : e)));
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    const text = msg.text();
    (NETWORK_NOISE.some((re) => re.test(text)) ? networkNoise : consoleErrors).push(text);
  });
  page.on("framenavigated", (frame) => {
    if (frame === page.mainFrame()) navigations.push(frame.url());
  });
  page.on("crash", () => pageErrors.push("the page crashed"));

  let checks = null;
  try {
    let response;
    try {
      response = await page.goto(url, { waitUntil: "domcontentloaded", timeout: 15_000 });
    } catch (e) {
      throw new SetupFailed(`could not load ${url}: ${e.message}`);
    }
    if (!response || !response.ok()) {
      throw new SetupFailed(`GET ${url} answered ${response ? response.status() : "nothing"}`);
    }
    const navigationsAtLoad = navigations.length;

    try {
      await page.waitForFunction(
        (min) =>
          document.body.getAttribute("data-connection") === "live" &&
          document.querySelectorAll("#queries tbody tr[data-key]").length >= min &&
          Number(document.querySelector("#last-update")?.getAttribute("data-now")) > 0,
        MIN_ROWS,
        { timeout: READY_TIMEOUT_MS, polling: 100 },
      );
    } catch (e) {
      const s = await page.evaluate(snapshot).catch(() => null);
      throw new CheckFailed(
        `the dashboard did not become live with >= ${MIN_ROWS} rows within ${READY_TIMEOUT_MS} ms ` +
          `(body[data-connection]=${s?.connection}, rows=${s ? Object.keys(s.rows).length : "?"})`,
      );
    }

    const marker = await page.evaluate(() => (window.__loadedOnce = Date.now()));
    const before = await page.evaluate(snapshot);
    // Watch the page: a fixed observation window, during which the dashboard
    // must update itself from the SSE stream (one tick per second).
    await page.waitForTimeout(OBSERVE_MS);
    const after = await page.evaluate(snapshot);

    const changed = Object.keys(before.rows).filter((key) => {
      const a = before.rows[key];
      const b = after.rows[key];
      return !b || a.age !== b.age || a.refreshed !== b.refreshed || a.status !== b.status;
    });
    const failures = [];
    if (!(after.now > before.now)) {
      failures.push(`#last-update[data-now] did not advance in ${OBSERVE_MS} ms (${before.now} -> ${after.now})`);
    }
    if (changed.length === 0) {
      failures.push(`no row's age label, last refresh or status changed in ${OBSERVE_MS} ms`);
    }
    if (after.marker !== marker) {
      failures.push(`window.__loadedOnce is gone (${after.marker}): the page was reloaded`);
    }
    if (navigations.length !== navigationsAtLoad) {
      failures.push(`the page navigated after loading: ${navigations.slice(navigationsAtLoad).join(", ")}`);
    }
    if (after.connection !== "live") {
      failures.push(`body[data-connection] is "${after.connection}" at the end, not "live"`);
    }
    if (Object.keys(after.rows).length < MIN_ROWS) {
      failures.push(`only ${Object.keys(after.rows).length} rows at the end (want >= ${MIN_ROWS})`);
    }
    if (pageErrors.length) failures.push(`page errors: ${pageErrors.join(" | ")}`);
    if (consoleErrors.length) failures.push(`console errors: ${consoleErrors.join(" | ")}`);

    const statuses = {};
    for (const r of Object.values(after.rows)) statuses[r.status] = (statuses[r.status] || 0) + 1;
    const sampleKey = changed[0];
    checks = {
      ok: failures.length === 0,
      url,
      rows: Object.keys(after.rows).length,
      statuses,
      changed_rows: changed.length,
      sample: sampleKey ? { key: sampleKey, before: before.rows[sampleKey], after: after.rows[sampleKey] } : null,
      data_now: { before: before.now, after: after.now, advanced_ms: after.now - before.now },
      online: after.online,
      connection: after.connection,
      reloaded: after.marker !== marker,
      page_errors: pageErrors.length,
      console_errors: consoleErrors.length,
      network_noise: networkNoise.length,
      failures,
    };
  } finally {
    // A screenshot is useful when a check failed too.
    try {
      await page.screenshot({ path: screenshotPath, fullPage: true, timeout: 15_000 });
    } catch (e) {
      console.error(`dashboard check: could not save the screenshot to ${screenshotPath}: ${e.message}`);
    }
  }

  checks.screenshot = existsSync(screenshotPath)
    ? { path: screenshotPath, bytes: statSync(screenshotPath).size }
    : null;
  if (!checks.screenshot) checks.failures.push(`no screenshot at ${screenshotPath}`);
  checks.ok = checks.failures.length === 0;
  checks.elapsed_ms = Date.now() - started;
  console.log(JSON.stringify(checks, null, 2));
  if (!checks.ok) throw new CheckFailed(checks.failures.join("; "));
}

let code = 0;
try {
  await main();
} catch (e) {
  code = e instanceof CheckFailed ? 1 : 2;
  console.error(`dashboard check: FAILED: ${e instanceof CheckFailed || e instanceof SetupFailed ? e.message : e.stack || e}`);
} finally {
  await closeBrowser();
  clearTimeout(watchdog);
}
process.exit(code);
