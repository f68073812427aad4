// Typed reads (`get`, `read`) and typed errors, against the real daemon.

import assert from "node:assert/strict";
import { test } from "node:test";

import { RevalidateError, createClient, encodeSegment, isRevalidateError } from "../src/index.js";
import { Daemon, Upstream } from "./support.js";

test("typed reads: numbers and strings are different keys, the second read comes from the cache", { timeout: 60_000 }, async (t) => {
  const up = await Upstream.start(t);
  const d = await Daemon.start(t, up, { staleness: 'item = "5m"' });
  const client = createClient({ baseUrl: `${d.url}/` });
  assert.equal(client.baseUrl, d.url, "the trailing / is dropped");

  const params = { page: 2, filter: { status: ["active", "paused"], deep: true } };
  const first = await client.read<{ params: unknown; version: number }>("item.get", params);
  assert.deepEqual(first.data.params, params, "the upstream saw typed params");
  assert.equal(first.cacheStatus, "revalidate; fwd=miss; stored");
  assert.equal(typeof first.version, "number");
  assert.match(first.etag ?? "", /^"[0-9a-f]+"$/);
  assert.equal(up.calls("item.get"), 1);

  // Members in another order: the same key, from the cache.
  const again = await client.read("item.get", { filter: { deep: true, status: ["active", "paused"] }, page: 2 });
  assert.equal(again.cacheStatus, "revalidate; hit");
  assert.deepEqual(again.data, first.data);
  assert.equal(again.etag, first.etag);
  assert.equal(up.calls("item.get"), 1, "no second upstream call");
  assert.equal(typeof again.age, "number");

  // The string "2" is another query.
  const text = await client.read<{ params: unknown }>("item.get", { page: "2", filter: params.filter });
  assert.equal(text.cacheStatus, "revalidate; fwd=miss; stored");
  assert.deepEqual(text.data.params, { page: "2", filter: params.filter });
  assert.equal(up.calls("item.get"), 2);

  // get() is the body alone; ifNoneMatch with the ETag is a 304 without one.
  assert.deepEqual(await client.get("item.get", params), first.data);
  const unchanged = await client.read("item.get", params, { ifNoneMatch: first.etag ?? "" });
  assert.equal(unchanged.status, 304);
  assert.equal(unchanged.data, undefined);
  assert.equal(up.calls("item.get"), 2);

  // No params: the bare action, once.
  await client.get("item.list");
  await client.get("item.list");
  assert.equal(up.calls("item.list"), 1);
});

test("errors are RevalidateErrors with the status, the daemon's code and kind", { timeout: 60_000 }, async (t) => {
  const up = await Upstream.start(t);
  up.script("item.list", () => ({ status: 500, body: { oops: true } }));
  const d = await Daemon.start(t, up);
  const client = createClient({ baseUrl: d.url });

  const unknown = await client.get("nope.get", { id: 1 }).then(
    () => assert.fail("an unknown action resolved"),
    (e: unknown) => e,
  );
  assert.ok(unknown instanceof RevalidateError && isRevalidateError(unknown));
  assert.equal(unknown.status, 404);
  assert.equal(unknown.code, "unknown_action");
  assert.deepEqual((unknown.body as { known: string[] }).known, ["item.get", "item.list"]);

  await assert.rejects(client.get("item.list", { id: 1 }), (e: unknown) => {
    assert.ok(e instanceof RevalidateError);
    assert.equal(e.status, 502);
    assert.equal(e.code, "upstream_failed");
    assert.equal(e.kind, "failed");
    assert.equal((e.body as { status: number }).status, 500, "the upstream's status");
    return true;
  });

  // Parameters that are not JSON are refused before sending.
  await assert.rejects(client.get("item.get", { n: 1n }), TypeError, "a BigInt cannot be sent");

  // No daemon at all.
  await d.stop();
  await assert.rejects(client.get("item.get"), (e: unknown) => {
    assert.ok(e instanceof RevalidateError);
    assert.equal(e.status, 0);
    assert.equal(e.code, "network");
    assert.ok(e.cause !== undefined);
    return true;
  });
});

test("headers go with every read; a function is called per request", { timeout: 60_000 }, async (t) => {
  const up = await Upstream.start(t);
  const d = await Daemon.start(t, up);
  const seen: (string | null)[] = [];
  let n = 0;
  const client = createClient({
    baseUrl: d.url,
    headers: () => ({ "x-request": String(++n) }),
    fetch: (input, init) => {
      seen.push(new Headers(init?.headers).get("x-request"));
      return fetch(input, init);
    },
  });
  await client.get("item.get", { id: 1 });
  await client.get("item.get", { id: 1 }, { headers: { "x-request": "mine" } });
  assert.deepEqual(seen, ["1", "mine"]);
});

test("action names are one percent-encoded path segment, as the daemon encodes them upstream", () => {
  assert.equal(encodeSegment("process.list"), "process.list");
  assert.equal(encodeSegment("a-b_c~d"), "a-b_c~d");
  assert.equal(encodeSegment("x\\y"), "x%5Cy");
  assert.equal(encodeSegment("50%"), "50%25");
  assert.equal(encodeSegment("it's (a*b)!"), "it%27s%20%28a%2Ab%29%21");
  assert.equal(encodeSegment("é/"), "%C3%A9%2F");
});
