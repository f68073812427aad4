// The cached read path in headless Chromium: revalidate's get_cached (the
// example's wasm) beside TanStack Query's getQueryData (npm
// @tanstack/query-core), on the same keys and data, in the same page.
//
//   node read-path.mjs <page-dir> [hits] [walks]
//
// <page-dir> holds bench.html, pkg/ (wasm-bindgen's output) and
// vendor/query-core/ (the package's build/modern); scripts/wasm-size.sh lays
// it out. Prints one JSON object: ns per hit, median of the walks, per key
// count, for prebuilt keys and for keys built on every read.

import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { launchChromium } from "./launch.mjs";

const [dir, hitsArg, walksArg] = process.argv.slice(2);
if (!dir) {
  console.error("usage: node read-path.mjs <page-dir> [hits] [walks]");
  process.exit(2);
}
const hits = Number(hitsArg ?? 100_000);
const walks = Number(walksArg ?? 7);
const browser = await launchChromium();
const page = await browser.newPage();
const types = { html: "text/html", js: "text/javascript", wasm: "application/wasm" };
await page.route("http://bench.test/**", (route) => {
  const file = join(dir, new URL(route.request().url()).pathname);
  if (!existsSync(file)) return route.fulfill({ status: 404, body: "" });
  return route.fulfill({ status: 200, body: readFileSync(file), contentType: types[file.split(".").pop()] });
});
const errors = [];
page.on("pageerror", (e) => errors.push(String(e)));
await page.goto("http://bench.test/bench.html");
await page.waitForFunction(() => window.benchReady === true, null, { timeout: 20_000 });
const results = { chromium: browser.version(), hits, walks, ns_per_hit: {} };
for (const keys of [1_000, 100_000]) {
  const r = await page.evaluate(([k, h, w]) => window.bench(k, h, w), [keys, hits, walks]);
  results.ns_per_hit[keys] = {
    revalidate_get_cached: +r.revalidate[0].toFixed(1),
    revalidate_key_built_per_read: +r.revalidate[1].toFixed(1),
    tanstack_getQueryData: +r.tanstack[0].toFixed(1),
    tanstack_key_built_per_read: +r.tanstack[1].toFixed(1),
  };
}
await browser.close();
if (errors.length) {
  console.error(errors.join("\n"));
  process.exit(1);
}
console.log(JSON.stringify(results, null, 2));
