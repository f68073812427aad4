// The TanStack Query v5 adapter with the real @tanstack/query-core and the
// real daemon: a QueryObserver sees the daemon's new data without a
// refetch of its own (with data), or after one refetch (without).

import assert from "node:assert/strict";
import { test } from "node:test";

import { QueryClient, type QueryKey, QueryObserver, type QueryObserverResult } from "@tanstack/query-core";

import { type Change, type RevalidateClient, createClient } from "../src/index.js";
import { connectQueryClient } from "../src/tanstack.js";
import { Daemon, NodeEventSource, Upstream, eventually, keyOf, quietFor } from "./support.js";

type Body = { action: string; params: unknown; version: number };

/** A QueryClient with one observed query of `item.get {id: 1}` whose queryFn reads through `client`. */
async function observed(t: import("node:test").TestContext, client: RevalidateClient, queryKey: QueryKey = ["item.get", { id: 1 }]) {
  const queryClient = new QueryClient({ defaultOptions: { queries: { retry: false, gcTime: Infinity } } });
  t.after(() => queryClient.clear());
  const calls = { queryFn: 0 };
  const observer = new QueryObserver<Body>(queryClient, {
    queryKey,
    queryFn: () => {
      calls.queryFn++;
      return client.get<Body>("item.get", { id: 1 });
    },
    staleTime: Infinity, // it never refetches by itself
  });
  const results: QueryObserverResult<Body>[] = [];
  t.after(observer.subscribe((r) => void results.push(r)));
  await eventually("the first data", () => observer.getCurrentResult().data?.version === 0);
  return { queryClient, observer, results, calls };
}

test("with data: the observer sees the new data without a refetch; queries the cache does not hold are left alone", { timeout: 60_000 }, async (t) => {
  const up = await Upstream.start(t);
  const d = await Daemon.start(t, up);
  const client = createClient({ baseUrl: d.url, EventSource: NodeEventSource, storage: null });
  const { queryClient, observer, results, calls } = await observed(t, client);
  await client.get("item.get", { id: 2 }); // active in the daemon, not in TanStack's cache
  assert.equal(calls.queryFn, 1);

  const applied: Change[] = [];
  let opens = 0;
  const stop = connectQueryClient(queryClient, client, { onOpen: () => void opens++, onChange: (c) => void applied.push(c) });
  t.after(stop);
  await eventually("the feed to open", () => opens === 1);
  const seenBefore = results.length;

  up.bump("item.get");
  await eventually("the observer to see version 1", () => observer.getCurrentResult().data?.version === 1);
  assert.equal(calls.queryFn, 1, "no second queryFn call");
  assert.ok(
    results.slice(seenBefore).every((r) => r.fetchStatus === "idle"),
    "the observer never fetched",
  );
  const fresh = await client.read<Body>("item.get", { id: 1 });
  assert.deepEqual(observer.getCurrentResult().data, fresh.data);
  const change = applied.find((c) => c.key === keyOf("item.get", { id: 1 }));
  assert.equal(observer.getCurrentResult().dataUpdatedAt, change?.updatedAt, "the daemon's fetch time");
  await eventually("the other query's change to arrive", () => applied.some((c) => c.key === keyOf("item.get", { id: 2 })));
  assert.equal(queryClient.getQueryCache().find({ queryKey: ["item.get", { id: 2 }], exact: true }), undefined, "no query made up");

  // Unsubscribed: the cache no longer follows the daemon.
  stop();
  up.bump("item.get");
  await eventually("the daemon to refresh", async () => (await d.versionOf(keyOf("item.get", { id: 1 }))) === (fresh.version ?? 0) + 1);
  await quietFor(300);
  assert.equal(observer.getCurrentResult().data?.version, 1, "nothing applied after unsubscribing");
  assert.equal(calls.queryFn, 1);
});

test("without data: the query is invalidated and refetches once", { timeout: 60_000 }, async (t) => {
  const up = await Upstream.start(t);
  const d = await Daemon.start(t, up);
  const client = createClient({ baseUrl: d.url, EventSource: NodeEventSource, storage: null });
  const { queryClient, observer, calls } = await observed(t, client);
  let opens = 0;
  t.after(connectQueryClient(queryClient, client, { includeData: false, onOpen: () => void opens++ }));
  await eventually("the feed to open", () => opens === 1);

  up.bump("item.get");
  await eventually("the observer to see version 1", () => observer.getCurrentResult().data?.version === 1);
  await quietFor(300);
  assert.equal(calls.queryFn, 2, "one refetch");
  assert.equal(observer.getCurrentResult().fetchStatus, "idle");
});

test("queryKey maps the daemon's queries to the app's own keys", { timeout: 60_000 }, async (t) => {
  const up = await Upstream.start(t);
  const d = await Daemon.start(t, up);
  const client = createClient({ baseUrl: d.url, EventSource: NodeEventSource, storage: null });
  const appKey = (action: string, params: unknown): QueryKey => [...action.split("."), params];
  const { queryClient, observer, calls } = await observed(t, client, appKey("item.get", { id: 1 }));
  let opens = 0;
  t.after(connectQueryClient(queryClient, client, { queryKey: appKey, actions: ["item.get"], onOpen: () => void opens++ }));
  await eventually("the feed to open", () => opens === 1);
  up.bump("item.get");
  await eventually("the observer to see version 1", () => observer.getCurrentResult().data?.version === 1);
  assert.equal(calls.queryFn, 1);
});

test("versions: an older change is not applied over a newer one; a snapshot invalidates and forgets", async (t) => {
  // The adapter's ordering rules, with a feed this test drives by hand (the real QueryClient).
  let deliver: ((c: Change) => void) | undefined;
  let closed = 0;
  const feed = {
    events: (onChange: (c: Change) => void) => {
      deliver = onChange;
      return () => void closed++;
    },
  } as unknown as RevalidateClient;
  const queryClient = new QueryClient({ defaultOptions: { queries: { retry: false } } });
  t.after(() => queryClient.clear());
  let fetched = 0;
  const observer = new QueryObserver(queryClient, {
    queryKey: ["item.get", { id: 1 }],
    queryFn: async () => ({ fetched: ++fetched }),
    staleTime: Infinity,
  });
  t.after(observer.subscribe(() => {}));
  await eventually("the first data", () => observer.getCurrentResult().data !== undefined);
  const stop = connectQueryClient(queryClient, feed);
  const send = (version: number, data?: unknown, fromSnapshot = false) => {
    const c: Change = {
      id: fromSnapshot ? undefined : String(version),
      key: keyOf("item.get", { id: 1 }),
      action: "item.get",
      params: { id: 1 },
      updatedAt: 1_000 * version,
      version,
      hasData: data !== undefined,
      dataOmitted: false,
      fromSnapshot,
    };
    if (data !== undefined) c.data = data;
    deliver?.(c);
  };
  send(5, { v: 5 });
  assert.deepEqual(observer.getCurrentResult().data, { v: 5 });
  send(4, { v: 4 });
  assert.deepEqual(observer.getCurrentResult().data, { v: 5 }, "an older version is not applied");
  send(5, { v: "5 again" });
  assert.deepEqual(observer.getCurrentResult().data, { v: 5 }, "nor the same one twice");
  send(2, undefined, true); // a restarted daemon's snapshot
  await eventually("the refetch", () => (observer.getCurrentResult().data as { fetched?: number }).fetched === 2);
  send(3, { v: 3 });
  assert.deepEqual(observer.getCurrentResult().data, { v: 3 }, "after a snapshot, the new daemon's versions count");
  stop();
  stop();
  assert.equal(closed, 1, "the feed closed once");
});
