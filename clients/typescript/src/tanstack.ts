import type { QueryClient, QueryKey } from "@tanstack/query-core";
import type { Change, EventsOptions, RevalidateClient, Unsubscribe } from "./client.js";

/** The options of {@link connectQueryClient}. */
export interface ConnectOptions extends Omit<EventsOptions, "includeData"> {
  /**
   * The TanStack query key of a daemon query. Default: `[action, params]`.
   * It must build the keys exactly as the app's queries do (the same
   * elements, the same parameter values and types), or changes will match
   * no query.
   */
  queryKey?: (action: string, params: unknown) => QueryKey;
  /**
   * Ask the daemon for each change's data (default `true`), so that a
   * change is written into the cache with `setQueryData` and observers see
   * it without a refetch. `false`: every change invalidates its query,
   * which refetches if it is active.
   */
  includeData?: boolean;
  /** After each change was applied to the cache. */
  onChange?: (change: Change) => void;
}

/**
 * Keeps `queryClient`'s queries in step with the daemon's change feed.
 *
 * For each change of a query that the cache holds (matched exactly by
 * `queryKey(action, params)`): when the event came with the data and its
 * version is newer than the last one this adapter applied to that query,
 * `setQueryData` (with the daemon's `updatedAt`); otherwise (no data: not
 * asked for, over `event_data_max_bytes`, or a snapshot after a gap)
 * `invalidateQueries({ queryKey, exact: true })`. Changes of queries the
 * cache does not hold are ignored. The query's data is taken to be the
 * daemon's body as it is (what `client.get(action, params)` resolves to).
 *
 * Returns an unsubscribe function that closes the feed and stops
 * listening to the cache.
 */
export function connectQueryClient(
  queryClient: QueryClient,
  client: RevalidateClient,
  options: ConnectOptions = {},
): Unsubscribe {
  const { queryKey = (action: string, params: unknown): QueryKey => [action, params], includeData = true, onChange, ...feed } =
    options;
  const cache = queryClient.getQueryCache();
  // The version last written into each query (by its hash), forgotten when TanStack removes the query.
  const applied = new Map<string, number>();
  const stopCache = cache.subscribe((event) => {
    if (event.type === "removed") applied.delete(event.query.queryHash);
  });

  const apply = (change: Change) => {
    const key = queryKey(change.action, change.params);
    const query = cache.find({ queryKey: key, exact: true });
    if (query === undefined) return;
    if (change.hasData) {
      const last = applied.get(query.queryHash);
      if (last !== undefined && change.version <= last) return;
      applied.set(query.queryHash, change.version);
      queryClient.setQueryData(key, change.data, change.updatedAt === null ? undefined : { updatedAt: change.updatedAt });
    } else {
      // A snapshot may follow a daemon restart, whose versions start again.
      if (change.fromSnapshot) applied.delete(query.queryHash);
      void queryClient.invalidateQueries({ queryKey: key, exact: true });
    }
  };

  const stopFeed = client.events(
    (change) => {
      apply(change);
      onChange?.(change);
    },
    { ...feed, includeData },
  );
  let stopped = false;
  return () => {
    if (stopped) return;
    stopped = true;
    stopFeed();
    stopCache();
  };
}
