// asActionClient: the app's own protocol (`POST /actions/{action}`, the
// filters as the JSON body), first against the app itself (what the
// original ActionClient talked to), then through the daemon's copy of it.

import assert from "node:assert/strict";
import { test } from "node:test";

import { type Change, RevalidateError, asActionClient, createClient } from "../src/index.js";
import { Daemon, NodeEventSource, Upstream, eventually, keyOf } from "./support.js";

type Body = { action: string; params: unknown; version: number };

test("executeAction speaks the app's own protocol (against the app itself)", { timeout: 30_000 }, async (t) => {
  const up = await Upstream.start(t);
  const api = asActionClient(createClient({ baseUrl: up.baseUrl }));

  assert.deepEqual(await api.executeAction("item.get", { id: 1, tags: ["a"] }), {
    action: "item.get",
    params: { id: 1, tags: ["a"] },
    version: 0,
  });
  assert.deepEqual(up.requests.at(-1), { method: "POST", path: "/actions/item.get", body: { id: 1, tags: ["a"] } });
  await api.executeAction("item.list");
  assert.deepEqual(up.requests.at(-1)?.body, {}, "no filters: an empty object");
  await api.executeAction("it's a/b");
  assert.equal(up.requests.at(-1)?.path, "/actions/it%27s%20a%2Fb", "the name is one path segment");

  up.script("item.get", () => ({ status: 404, body: { error: "not_found", message: "no such item" } }));
  await assert.rejects(api.executeAction("item.get", { id: 9 }), (e: unknown) => {
    assert.ok(e instanceof RevalidateError);
    assert.equal(e.status, 404);
    assert.equal(e.code, "not_found");
    assert.deepEqual(e.body, { error: "not_found", message: "no such item" });
    return true;
  });

  const custom = createClient({ baseUrl: up.baseUrl, actionPath: (a) => `/actions/${a.toUpperCase()}` });
  await custom.executeAction("item.list", { x: 1 });
  assert.equal(up.requests.at(-1)?.path, "/actions/ITEM.LIST");
});

test("executeAction through the daemon: reads come cache-first, errors are typed", { timeout: 60_000 }, async (t) => {
  const up = await Upstream.start(t);
  const d = await Daemon.start(t, up, { staleness: 'item = "5m"' });
  const client = createClient({ baseUrl: d.url });
  const api = asActionClient(client);

  const first = await api.executeAction<Body>("item.get", { id: 1 });
  assert.deepEqual(first, { action: "item.get", params: { id: 1 }, version: 0 });
  assert.deepEqual(await api.executeAction("item.get", { id: 1 }), first);
  assert.equal(up.calls("item.get"), 1, "the second call came from the cache");
  // The same query as a typed read.
  const read = await client.read("item.get", { id: 1 });
  assert.equal(read.cacheStatus, "revalidate; hit");
  assert.equal(up.calls("item.get"), 1);

  up.script("item.list", () => ({ status: 404, body: { error: "not_found" } }));
  await assert.rejects(api.executeAction("item.list", { id: 9 }), (e: unknown) => {
    assert.ok(e instanceof RevalidateError);
    assert.equal(e.status, 404);
    return true;
  });
  await assert.rejects(api.executeAction("nope.get", {}), (e: unknown) => {
    assert.ok(e instanceof RevalidateError);
    assert.equal(e.status, 404);
    return true;
  });
});

test("a mutation through the daemon is forwarded, and the queries it invalidates change on the feed", { timeout: 60_000 }, async (t) => {
  const up = await Upstream.start(t);
  // The app's update changes what item.get answers.
  up.script("item.update", (params) => {
    up.bump("item.get");
    return { status: 200, body: { updated: params } };
  });
  const d = await Daemon.start(t, up, {
    staleness: 'item = "5m"',
    extra: '[actions."item.update"]\nkind = "mutation"\ninvalidates = ["item.get"]\n',
  });
  const client = createClient({ baseUrl: d.url, EventSource: NodeEventSource, storage: null });
  const api = asActionClient(client);
  assert.equal((await api.executeAction<Body>("item.get", { id: 1 })).version, 0);
  const changes: Change<Body>[] = [];
  let opens = 0;
  t.after(client.events<Body>((c) => void changes.push(c), { includeData: true, onOpen: () => void opens++ }));
  await eventually("the feed to open", () => opens === 1);

  assert.deepEqual(await api.executeAction("item.update", { id: 1, name: "x" }), { updated: { id: 1, name: "x" } });
  await api.executeAction("item.update", { id: 1, name: "x" });
  assert.equal(up.calls("item.update"), 2, "mutations are not cached");

  // Each update bumps item.get; the refetch after the second one answers
  // version 2 (the first one's may answer 1 or 2), so wait for that one:
  // a read after an earlier change could already see the later value.
  const change = await eventually("item.get to change on the feed", () =>
    changes.find((c) => c.key === keyOf("item.get", { id: 1 }) && (c.data?.version ?? 0) === 2),
  );
  assert.deepEqual(await api.executeAction("item.get", { id: 1 }), change.data);
});
