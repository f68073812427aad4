// The package as an app sees it: its exports resolve to ES modules with
// declarations, and nothing but the platform is loaded at run time.

import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { PACKAGE_DIR } from "./support.js";

const manifest = JSON.parse(readFileSync(path.join(PACKAGE_DIR, "package.json"), "utf8")) as {
  name: string;
  type: string;
  license: string;
  dependencies?: unknown;
  peerDependencies?: Record<string, string>;
  exports: Record<string, { types: string; default: string }>;
};

test("the package's entry points are ES modules with .d.ts, under its own name", async () => {
  assert.equal(manifest.name, "@revalidate/client");
  assert.equal(manifest.type, "module");
  assert.equal(manifest.license, "MIT OR Apache-2.0");
  for (const [entry, files] of Object.entries(manifest.exports)) {
    assert.ok(existsSync(path.join(PACKAGE_DIR, files.types)), `${entry}: ${files.types}`);
    assert.ok(existsSync(path.join(PACKAGE_DIR, files.default)), `${entry}: ${files.default}`);
  }
  // A package may import itself by name through its exports, as an app would.
  const name = manifest.name;
  const main = (await import(name)) as Record<string, unknown>;
  for (const f of ["createClient", "asActionClient", "RevalidateError", "isRevalidateError", "encodeSegment"]) {
    assert.equal(typeof main[f], "function", f);
  }
  const tanstack = (await import(`${name}/tanstack`)) as Record<string, unknown>;
  assert.equal(typeof tanstack["connectQueryClient"], "function");
});

test("no runtime dependencies: @tanstack/query-core is an optional peer, imported for its types only", () => {
  assert.equal(manifest.dependencies, undefined);
  assert.ok(manifest.peerDependencies?.["@tanstack/query-core"]?.startsWith("^5"));
  for (const file of ["index.js", "client.js", "errors.js", "actions.js", "tanstack.js"]) {
    const js = readFileSync(path.join(PACKAGE_DIR, "dist/src", file), "utf8");
    const imports = [...js.matchAll(/^\s*(?:import|export)[^;]*?from\s+["']([^"']+)["']/gm)].map((m) => m[1]);
    assert.ok(
      imports.every((i) => i?.startsWith("./")),
      `${file} imports only its siblings: ${imports.join(", ")}`,
    );
  }
});

test("the READMEs' example is the one the build type-checks (test/example.ts)", () => {
  const example = readFileSync(path.join(PACKAGE_DIR, "test/example.ts"), "utf8");
  const lines = example.split("\n").filter((l) => /^(const revalidate|const active|connectQueryClient)/.test(l));
  assert.equal(lines.length, 3);
  for (const readme of ["README.md", "../../README.md"]) {
    const text = readFileSync(path.join(PACKAGE_DIR, readme), "utf8");
    for (const line of lines) assert.ok(text.includes(line), `${readme} shows: ${line}`);
    assert.ok(text.includes('import { connectQueryClient } from "@revalidate/client/tanstack";'), readme);
  }
});
