// Starting headless Chromium for the browser checks in this directory.
//
// A first start on a fresh machine can be slow: the browser's ~300 MB of
// binaries come off a cold disk while the test run keeps both cores busy, and
// fontconfig may build its cache. CI once saw Chromium print nothing for 18 s
// and miss a 20 s launch timeout. So a start gets LAUNCH_TIMEOUT_MS, and one
// that times out is tried once more: by then the files are in the page cache.

import { existsSync } from "node:fs";
import { chromium } from "playwright-core";

/** The Chromium binary: $CHROMIUM, else Debian's. */
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

/** Flags every check starts Chromium with. */
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-quic",
  // Containers often have a tiny /dev/shm; Chromium crashes when it fills up.
  "--disable-dev-shm-usage",
];

/** How long one start may take. */
export const LAUNCH_TIMEOUT_MS = 60_000;
/** How many starts are tried before giving up. */
const LAUNCH_ATTEMPTS = 2;
/** The longest `launchChromium` takes: a script's watchdog adds it to its own budget. */
export const LAUNCH_BUDGET_MS = LAUNCH_ATTEMPTS * LAUNCH_TIMEOUT_MS;

/**
 * Starts Chromium with CHROMIUM_ARGS and `extraArgs`. Throws an Error that
 * names the binary and every attempt's cause when it cannot.
 */
export async function launchChromium(extraArgs = []) {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`no Chromium at ${CHROMIUM}: apt-get install -y chromium, or set CHROMIUM`);
  }
  const causes = [];
  for (let attempt = 1; attempt <= LAUNCH_ATTEMPTS; attempt++) {
    const started = Date.now();
    try {
      return await chromium.launch({
        executablePath: CHROMIUM,
        headless: true,
        args: [...CHROMIUM_ARGS, ...extraArgs],
        timeout: LAUNCH_TIMEOUT_MS,
      });
    } catch (e) {
      causes.push(`attempt ${attempt} (${Date.now() - started} ms): ${e.message}`);
      console.error(`could not start ${CHROMIUM}, attempt ${attempt} of ${LAUNCH_ATTEMPTS}`);
    }
  }
  throw new Error(`could not start ${CHROMIUM}:\n${causes.join("\n")}`);
}
