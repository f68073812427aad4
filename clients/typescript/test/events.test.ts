// The change feed (`events()`) against the real daemon: data with the
// change, resuming by itself across a lost connection and across a page
// reload (exactly the missed events), snapshots, shutdown, filters, and a
// clean unsubscribe.

import assert from "node:assert/strict";
import { test } from "node:test";

import { type Change, createClient } from "../src/index.js";
import {
  Daemon,
  NodeEventSource,
  Proxy,
  Upstream,
  Watched,
  WatchedEventSource,
  eventually,
  keyOf,
  memoryStorage,
  quietFor,
} from "./support.js";

type Body = { action: string; params: unknown; version: number };

/** A feed's changes and connection events, kept for the test. */
function recorder() {
  const changes: Change<Body>[] = [];
  const snapshots: (readonly Change[])[] = [];
  const state = { opens: 0, errors: 0 };
  return {
    changes,
    snapshots,
    state,
    onChange: (c: Change<Body>) => void changes.push(c),
    options: {
      onOpen: () => void state.opens++,
      onError: () => void state.errors++,
      onSnapshot: (s: readonly Change[]) => void snapshots.push(s),
    },
  };
}

const fast = { initialDelayMs: 50, maxDelayMs: 200 };
const ids = (cs: readonly Change[]) => cs.map((c) => Number(c.id));

/** Bumps `action` upstream and waits until the daemon holds a newer version of `key`. */
async function change(up: Upstream, d: Daemon, action: string, key: string): Promise<number> {
  const before = (await d.versionOf(key)) ?? 0;
  up.bump(action);
  return eventually(`the daemon to refresh ${key}`, async () => {
    const v = (await d.versionOf(key)) ?? 0;
    return v > before ? v : undefined;
  });
}

test("includeData: each change carries a body equal to a fresh get of its query", { timeout: 60_000 }, async (t) => {
  const up = await Upstream.start(t);
  const d = await Daemon.start(t, up);
  const client = createClient({ baseUrl: d.url, EventSource: NodeEventSource, storage: null });
  await client.get("item.get", { id: 1 });
  await client.get("item.get", { id: 2 });
  const r = recorder();
  t.after(client.events(r.onChange, { ...r.options, includeData: true }));
  await eventually("the feed to open", () => r.state.opens === 1);

  up.bump("item.get");
  await eventually("a change of each query", () => r.changes.length >= 2);
  assert.equal(r.changes.length, 2);
  for (const c of r.changes) {
    const fresh = await client.read<Body>("item.get", c.params);
    assert.equal(c.hasData, true);
    assert.equal(c.dataOmitted, false);
    assert.equal(c.fromSnapshot, false);
    assert.deepEqual(c.data, fresh.data, "the event's body is what a read returns");
    assert.equal(c.version, fresh.version);
    assert.equal(c.data?.version, 1);
    assert.equal(c.action, "item.get");
    assert.equal(c.key, keyOf("item.get", c.params));
    assert.equal(typeof c.updatedAt, "number");
  }
  assert.deepEqual(r.changes.map((c) => c.params).sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b))), [
    { id: 1 },
    { id: 2 },
  ]);

  // Without includeData: no data.
  const plain = recorder();
  t.after(client.events(plain.onChange, plain.options));
  await eventually("the second feed to open", () => plain.state.opens === 1);
  up.bump("item.get");
  await eventually("plain changes", () => plain.changes.length >= 2);
  assert.ok(plain.changes.every((c) => !c.hasData && !("data" in c) && !c.dataOmitted));
});

test("a value over event_data_max_bytes comes as dataOmitted, without data", { timeout: 60_000 }, async (t) => {
  const up = await Upstream.start(t);
  const d = await Daemon.start(t, up, { server: "event_data_max_bytes = 10" });
  const client = createClient({ baseUrl: d.url, EventSource: NodeEventSource, storage: null });
  await client.get("item.get", { id: 1 });
  const r = recorder();
  t.after(client.events(r.onChange, { ...r.options, includeData: true }));
  await eventually("the feed to open", () => r.state.opens === 1);
  up.bump("item.get");
  const [c] = await eventually("a change", () => (r.changes.length > 0 ? r.changes : undefined));
  assert.equal(c?.hasData, false);
  assert.equal(c?.dataOmitted, true);
});

test("a lost connection: the feed reconnects by itself with ?last_event_id= and gets exactly the missed events", { timeout: 60_000 }, async (t) => {
  const up = await Upstream.start(t);
  const d = await Daemon.start(t, up);
  const proxy = await Proxy.start(t, d.addr);
  const client = createClient({ baseUrl: proxy.url, EventSource: NodeEventSource, storage: null, reconnect: fast });
  const key = keyOf("item.get", { id: 1 });
  await client.get("item.get", { id: 1 });
  const r = recorder();
  t.after(client.events(r.onChange, r.options));
  await eventually("the feed to open", () => r.state.opens === 1);
  up.bump("item.get");
  await eventually("the first change", () => r.changes.length === 1);
  const first = Number(r.changes[0]?.id);
  assert.ok(first > 0);
  assert.equal(client.lastEventId(), String(first), "the id is remembered");

  // The network goes: the stream is reset and reconnections are refused.
  proxy.refusing = true;
  proxy.cut();
  await eventually("the feed to notice", () => r.state.errors > 0);
  const v2 = await change(up, d, "item.get", key);
  const v3 = await change(up, d, "item.get", key);
  assert.equal(r.changes.length, 1, "nothing arrives while the network is gone");

  proxy.refusing = false;
  await eventually("the missed changes", () => r.changes.length >= 3);
  await quietFor(400);
  assert.deepEqual(ids(r.changes), [first, first + 1, first + 2], "exactly the missed events, once each");
  assert.deepEqual(
    r.changes.slice(1).map((c) => c.version),
    [v2, v3],
  );
  assert.ok(r.state.opens >= 2);
  assert.ok(
    proxy.requestLines.includes(`GET /v1/events?last_event_id=${first}`),
    `the reconnection asked to resume after ${first}: ${proxy.requestLines.join(", ")}`,
  );
  assert.equal(client.lastEventId(), String(first + 2));
});

test("a page reload: a new client resumes from sessionStorage with exactly the missed events, their data equal to a fresh get", { timeout: 60_000 }, async (t) => {
  const up = await Upstream.start(t);
  const d = await Daemon.start(t, up);
  const storage = memoryStorage();
  const key = keyOf("item.get", { id: 1 });
  const page1 = createClient({ baseUrl: d.url, EventSource: NodeEventSource, storage });
  await page1.get("item.get", { id: 1 });
  const r1 = recorder();
  const stop1 = page1.events(r1.onChange, { ...r1.options, includeData: true });
  t.after(stop1);
  await eventually("the feed to open", () => r1.state.opens === 1);
  up.bump("item.get");
  await eventually("a change", () => r1.changes.length === 1);
  stop1(); // the page goes away
  const seen = r1.changes[0]?.id;
  assert.deepEqual([...storage.items.values()], [seen], "the last id is in sessionStorage");

  await change(up, d, "item.get", key);
  const latest = await change(up, d, "item.get", key);

  const page2 = createClient({ baseUrl: d.url, EventSource: NodeEventSource, storage });
  assert.equal(page2.lastEventId(), seen);
  const r2 = recorder();
  t.after(page2.events(r2.onChange, { ...r2.options, includeData: true }));
  await eventually("the missed changes", () => r2.changes.length >= 2);
  await quietFor(400);
  assert.deepEqual(ids(r2.changes), [Number(seen) + 1, Number(seen) + 2], "exactly the missed events");
  assert.equal(r2.changes[1]?.version, latest);
  const fresh = await page2.get<Body>("item.get", { id: 1 });
  for (const c of r2.changes) {
    // The daemon sends the value it holds when it sends the event.
    assert.deepEqual(c.data, fresh, "the replayed body equals a fresh read");
  }
  assert.equal(page2.lastEventId(), String(Number(seen) + 2));

  // lastEventId: null starts from now, whatever was remembered.
  const r3 = recorder();
  t.after(page2.events(r3.onChange, { ...r3.options, lastEventId: null }));
  await eventually("the third feed to open", () => r3.state.opens === 1);
  await quietFor(300);
  assert.equal(r3.changes.length, 0);
});

test("a gap older than the replay buffer: a snapshot, each cached query handed over as a change without data", { timeout: 60_000 }, async (t) => {
  const up = await Upstream.start(t);
  const d = await Daemon.start(t, up, { server: "event_replay = 1" });
  const client = createClient({ baseUrl: d.url, EventSource: NodeEventSource, storage: null });
  const key = keyOf("item.get", { id: 1 });
  await client.get("item.get", { id: 1 });
  await client.get("item.list", { all: true });
  const r1 = recorder();
  const stop1 = client.events(r1.onChange, r1.options);
  await eventually("the feed to open", () => r1.state.opens === 1);
  up.bump("item.get");
  await eventually("a change", () => r1.changes.length === 1);
  stop1();
  await change(up, d, "item.get", key);
  const v = await change(up, d, "item.get", key);

  const r2 = recorder();
  t.after(client.events(r2.onChange, { ...r2.options, includeData: true }));
  await eventually("the snapshot", () => r2.snapshots.length === 1);
  const byKey = new Map(r2.changes.map((c) => [c.key, c]));
  assert.equal(r2.changes.length, 2, "every cached query");
  assert.equal(byKey.get(key)?.version, v);
  assert.ok(byKey.has(keyOf("item.list", { all: true })));
  assert.ok(r2.changes.every((c) => c.fromSnapshot && !c.hasData && c.id === undefined));
  assert.equal(r2.snapshots[0]?.length, 2);

  // Live changes follow, with ids again.
  up.bump("item.get");
  await eventually("a live change after the snapshot", () => r2.changes.length === 3);
  assert.equal(r2.changes[2]?.fromSnapshot, false);
  assert.equal(r2.changes[2]?.hasData, true);
  assert.equal(client.lastEventId(), r2.changes[2]?.id);
});

test("shutdown: the feed reconnects to the restarted daemon and resynchronises", { timeout: 90_000 }, async (t) => {
  const up = await Upstream.start(t);
  const d1 = await Daemon.start(t, up);
  const proxy = await Proxy.start(t, d1.addr);
  const client = createClient({ baseUrl: proxy.url, EventSource: NodeEventSource, storage: null, reconnect: fast });
  await client.get("item.get", { id: 1 });
  const r = recorder();
  t.after(client.events(r.onChange, r.options));
  await eventually("the feed to open", () => r.state.opens === 1);
  up.bump("item.get");
  await eventually("a change", () => r.changes.length === 1);

  proxy.refusing = true; // until the new daemon holds the query
  await d1.stop(); // its streams end with `event: shutdown`
  const d2 = await Daemon.start(t, up);
  await fetch(`${d2.url}/v1/resources/item.get`, { method: "POST", body: JSON.stringify({ id: 1 }) });
  proxy.target = d2.addr;
  proxy.refusing = false;

  await eventually("the snapshot from the new daemon", () => r.snapshots.length === 1, 20_000);
  assert.ok(r.state.opens >= 2);
  const last = r.changes.at(-1);
  assert.equal(last?.fromSnapshot, true);
  assert.equal(last?.key, keyOf("item.get", { id: 1 }));
  // and it hears the new daemon's changes.
  up.bump("item.get");
  await eventually("a change from the new daemon", () => r.changes.some((c, i) => i > 1 && !c.fromSnapshot));
});

test("actions: only those actions' changes, and their own remembered id", { timeout: 60_000 }, async (t) => {
  const up = await Upstream.start(t);
  const d = await Daemon.start(t, up);
  const client = createClient({ baseUrl: d.url, EventSource: NodeEventSource, storage: null });
  await client.get("item.get", { id: 1 });
  await client.get("item.list", { id: 1 });
  const r = recorder();
  t.after(client.events(r.onChange, { ...r.options, actions: ["item.list"] }));
  await eventually("the feed to open", () => r.state.opens === 1);
  await change(up, d, "item.get", keyOf("item.get", { id: 1 }));
  up.bump("item.list");
  await eventually("the item.list change", () => r.changes.length >= 1);
  await quietFor(300);
  assert.deepEqual(
    r.changes.map((c) => c.action),
    ["item.list"],
  );
  assert.equal(client.lastEventId(["item.list"]), r.changes[0]?.id);
  assert.equal(client.lastEventId(), undefined, "a feed of every action remembers its own");
});

test("unsubscribe: the EventSource is closed, its connection gone, no more changes, no reconnection", { timeout: 60_000 }, async (t) => {
  const up = await Upstream.start(t);
  const d = await Daemon.start(t, up);
  const proxy = await Proxy.start(t, d.addr);
  const client = createClient({ baseUrl: proxy.url, EventSource: Watched, storage: null, reconnect: fast });
  const key = keyOf("item.get", { id: 1 });
  await client.get("item.get", { id: 1 });
  const before = WatchedEventSource.instances.length;
  const r = recorder();
  const stop = client.events(r.onChange, r.options);
  await eventually("the feed to open", () => r.state.opens === 1);
  const source = WatchedEventSource.instances[before];
  assert.ok(source !== undefined && WatchedEventSource.instances.length === before + 1);
  assert.equal(proxy.open("GET /v1/events"), 1);
  up.bump("item.get");
  await eventually("a change", () => r.changes.length === 1);

  stop();
  stop(); // twice is harmless
  assert.equal(source.readyState, WatchedEventSource.CLOSED);
  await eventually("the stream's connection to close", () => proxy.open("GET /v1/events") === 0);
  await change(up, d, "item.get", key);
  await quietFor(300);
  assert.equal(r.changes.length, 1, "no change after unsubscribing");
  assert.equal(WatchedEventSource.instances.length, before + 1, "no new connection");

  // Unsubscribing while a reconnection is pending cancels it; so does an AbortSignal.
  const r2 = recorder();
  const abort = new AbortController();
  client.events(r2.onChange, { ...r2.options, signal: abort.signal });
  await eventually("the second feed to open", () => r2.state.opens === 1);
  proxy.refusing = true;
  proxy.cut();
  await eventually("the second feed to notice", () => r2.state.errors > 0);
  abort.abort();
  const count = WatchedEventSource.instances.length;
  await quietFor(500); // more than the longest backoff (200 ms)
  assert.equal(WatchedEventSource.instances.length, count, "no reconnection after the abort");
  assert.ok(WatchedEventSource.instances.every((es) => es.readyState === WatchedEventSource.CLOSED));
});

test("events() without an EventSource says how to give one", (t) => {
  // As on Node 20, whatever this Node has.
  const g = globalThis as { EventSource?: unknown };
  const had = Object.getOwnPropertyDescriptor(g, "EventSource");
  Object.defineProperty(g, "EventSource", { value: undefined, configurable: true, writable: true });
  t.after(() => (had === undefined ? delete g.EventSource : Object.defineProperty(g, "EventSource", had)));
  const client = createClient({ baseUrl: "http://127.0.0.1:9" });
  assert.throws(() => client.events(() => {}), /pass one in createClient\(\{ EventSource \}\)/);
});
