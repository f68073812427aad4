import { RevalidateError, errorOfAnswer } from "./errors.js";

/** Headers sent with every read and action call: fixed, or computed per request (a fresh token). */
export type HeadersOption = HeadersInit | (() => HeadersInit | Promise<HeadersInit>);

/** What the client needs of `sessionStorage`. */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/** What the client needs of a `MessageEvent` from an `EventSource`. */
export interface MessageEventLike {
  readonly data: unknown;
  readonly lastEventId: string;
}

/** What the client needs of an `EventSource` (the browser's, or the `eventsource` package's). */
export interface EventSourceLike {
  readonly readyState: number;
  addEventListener(type: string, listener: (event: MessageEventLike) => void): void;
  close(): void;
}

/** An `EventSource` constructor: `globalThis.EventSource` in browsers, Deno, Bun and Node 22+. */
export type EventSourceConstructor = new (url: string, init?: { withCredentials?: boolean }) => EventSourceLike;

/** The options of {@link createClient}. */
export interface ClientOptions {
  /** The daemon's address, e.g. `"http://127.0.0.1:8787"` (a path prefix is kept; a trailing `/` is not). */
  baseUrl: string;
  /** Sent with every read and action call (not with the change feed: an `EventSource` sends no custom headers). */
  headers?: HeadersOption;
  /** Default: `globalThis.fetch`. */
  fetch?: typeof globalThis.fetch;
  /** Default: `globalThis.EventSource` (Node 20 has none: pass the `eventsource` package's). */
  EventSource?: EventSourceConstructor;
  /** The second argument of every `new EventSource(url, init)`, e.g. `{ withCredentials: true }`. */
  eventSourceInit?: { withCredentials?: boolean; [option: string]: unknown };
  /**
   * Where the feed remembers its last event id across page loads. Default:
   * `globalThis.sessionStorage` when there is a usable one, else memory
   * (this client only). `null`: memory only.
   */
  storage?: StorageLike | null;
  /**
   * The app's own path of an action, as the daemon answers it: a template
   * whose `{action}` is replaced by the name percent-encoded as one path
   * segment, or a function returning the path. Default: `"/actions/{action}"`.
   */
  actionPath?: string | ((action: string) => string);
  /** The change feed's reconnection backoff: doubles from `initialDelayMs` up to `maxDelayMs`, with jitter. */
  reconnect?: { initialDelayMs?: number; maxDelayMs?: number };
}

/** Per-request options. */
export interface RequestOptions {
  signal?: AbortSignal;
  /** Added to (and winning over) the client's headers. */
  headers?: HeadersInit;
}

/** A read with the daemon's metadata. */
export interface ReadResult<T> {
  /** The upstream's JSON body, parsed. */
  data: T;
  /** `200`, or `304` when `ifNoneMatch` matched (then `data` is `undefined`). */
  status: number;
  /** The body's strong validator (`"<hex>"`). */
  etag: string | null;
  /** The query's data version (`X-Revalidate-Version`); changes whenever the body does. */
  version: number | null;
  /** `revalidate; hit`, `revalidate; hit; stale` or `revalidate; fwd=miss; stored`. */
  cacheStatus: string | null;
  /** Seconds since the upstream sent or confirmed the value. */
  age: number | null;
}

/** One change of a query's data, as `events()` hands it over. */
export interface Change<T = unknown> {
  /** The event's id; `undefined` for an entry of a snapshot. */
  id: string | undefined;
  /** The daemon's key of the query (`action` followed by its canonical parameters). */
  key: string;
  action: string;
  /** The query's parameters, as `get(action, params)` was given them (`null` for none). */
  params: unknown;
  /** When the new data was fetched, Unix milliseconds. */
  updatedAt: number | null;
  /** The query's data version. */
  version: number;
  /** Whether `data` holds the new value (with `includeData`, when it was not over `event_data_max_bytes`). */
  hasData: boolean;
  /** The new value, equal to what a read returns now; only when `hasData`. */
  data?: T;
  /** `includeData` was asked for but the value was over `[server] event_data_max_bytes`. */
  dataOmitted: boolean;
  /**
   * From a `snapshot`: the feed could not replay what was missed (the gap
   * was older than the daemon's replay buffer, or the daemon restarted), so
   * every cached query is reported as changed, without data.
   */
  fromSnapshot: boolean;
}

/** The options of `events()`. */
export interface EventsOptions {
  /** Only these actions (all when absent or empty). */
  actions?: readonly string[];
  /**
   * Resume after this id. Default: the id this feed remembered (the same
   * base URL and actions, in `storage`); `null`: from now on, whatever was
   * remembered.
   */
  lastEventId?: string | number | null;
  /** Each change carries the query's new value (`?include=data`). */
  includeData?: boolean;
  /** Each time a connection opens. */
  onOpen?: () => void;
  /** A connection was lost (a reconnection is scheduled), or `onChange` threw. */
  onError?: (error: unknown) => void;
  /** A snapshot arrived (after its queries were each handed to `onChange`). */
  onSnapshot?: (changes: readonly Change[]) => void;
  /** Aborting it unsubscribes. */
  signal?: AbortSignal;
}

/** Stops a feed: closes its `EventSource` and cancels any reconnection. Calling it again does nothing. */
export type Unsubscribe = () => void;

/** A client of one daemon. */
export interface RevalidateClient {
  /** The daemon's address, without a trailing `/`. */
  readonly baseUrl: string;
  /**
   * Cache-first read of one query with typed parameters
   * (`POST /v1/resources/{action}`, the parameters as the JSON body): the
   * same key as the library's `QueryKey::new(action, params)`, so `{page: 2}`
   * and `{page: "2"}` are two queries. No `params` is the bare action.
   */
  get<T = unknown>(action: string, params?: unknown, options?: RequestOptions): Promise<T>;
  /** `get` with the daemon's metadata; `ifNoneMatch` makes a matching ETag a `304` without a body. */
  read<T = unknown>(
    action: string,
    params?: unknown,
    options?: RequestOptions & { ifNoneMatch?: string },
  ): Promise<ReadResult<T>>;
  /**
   * The app's own protocol through the daemon: `POST {baseUrl}{actionPath}`
   * with `filters` as the JSON body. Reads come cache-first, mutations are
   * forwarded; resolves to the parsed JSON.
   */
  executeAction<T = unknown>(name: string, filters?: unknown, options?: RequestOptions): Promise<T>;
  /**
   * Subscribes to the change feed (`GET /v1/events`). Reconnects by itself
   * with backoff, resuming after the last id it saw (`?last_event_id=`),
   * remembered per base URL and actions.
   */
  events<T = unknown>(onChange: (change: Change<T>) => void, options?: EventsOptions): Unsubscribe;
  /** The id a feed with these `actions` would resume after, if one is remembered. */
  lastEventId(actions?: readonly string[]): string | undefined;
}

/** Percent-encodes `name` as one path segment: every byte but `A-Z a-z 0-9 - . _ ~`, as the daemon does upstream. */
export function encodeSegment(name: string): string {
  return encodeURIComponent(name).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function defaultStorage(): StorageLike | undefined {
  try {
    const s = (globalThis as { sessionStorage?: StorageLike }).sessionStorage;
    if (s === undefined) return undefined;
    s.getItem("revalidate:probe"); // throws where storage is denied (sandboxed frames)
    return s;
  } catch {
    return undefined;
  }
}

/** A `Map` behind the `StorageLike` interface. */
function memoryStorage(): StorageLike {
  const items = new Map<string, string>();
  return {
    getItem: (key) => items.get(key) ?? null,
    setItem: (key, value) => void items.set(key, value),
  };
}

function actionsOf(actions: readonly string[] | undefined): string[] {
  return [...new Set(actions ?? [])].sort();
}

interface WireChange {
  key: string;
  action: string;
  params?: unknown;
  updated_at?: number | null;
  version: number;
  data?: unknown;
  data_omitted?: boolean;
}

function isWireChange(v: unknown): v is WireChange {
  if (v === null || typeof v !== "object") return false;
  const o = v as Record<string, unknown>;
  return typeof o["key"] === "string" && typeof o["action"] === "string" && typeof o["version"] === "number";
}

function changeOf<T>(w: WireChange, id: string | undefined, fromSnapshot: boolean): Change<T> {
  const hasData = !fromSnapshot && Object.prototype.hasOwnProperty.call(w, "data");
  const change: Change<T> = {
    id,
    key: w.key,
    action: w.action,
    params: w.params ?? null,
    updatedAt: typeof w.updated_at === "number" ? w.updated_at : null,
    version: w.version,
    hasData,
    dataOmitted: w.data_omitted === true,
    fromSnapshot,
  };
  if (hasData) change.data = w.data as T;
  return change;
}

function parse(data: unknown): unknown {
  if (typeof data !== "string") return undefined;
  try {
    return JSON.parse(data);
  } catch {
    return undefined;
  }
}

/** A client of the daemon at `options.baseUrl`. */
export function createClient(options: ClientOptions): RevalidateClient {
  const baseUrl = options.baseUrl.replace(/\/+$/, "");
  const fetchFn = options.fetch ?? globalThis.fetch?.bind(globalThis);
  const storage: StorageLike = (options.storage === null ? undefined : (options.storage ?? defaultStorage())) ?? memoryStorage();
  const initialDelay = Math.max(1, options.reconnect?.initialDelayMs ?? 500);
  const maxDelay = Math.max(initialDelay, options.reconnect?.maxDelayMs ?? 30_000);
  const actionPath = options.actionPath ?? "/actions/{action}";
  const pathOf =
    typeof actionPath === "function"
      ? actionPath
      : (name: string) => actionPath.split("{action}").join(encodeSegment(name));

  async function headersFor(extra: HeadersInit | undefined): Promise<Headers> {
    const base = typeof options.headers === "function" ? await options.headers() : options.headers;
    const h = new Headers(base);
    new Headers(extra).forEach((value, name) => h.set(name, value));
    if (!h.has("accept")) h.set("accept", "application/json");
    h.set("content-type", "application/json");
    return h;
  }

  async function post(path: string, body: unknown, opts: RequestOptions | undefined, what: string, extra?: HeadersInit) {
    if (fetchFn === undefined) throw new TypeError("no fetch: pass one in createClient({ fetch })");
    const headers = await headersFor(opts?.headers);
    new Headers(extra).forEach((value, name) => headers.set(name, value));
    const init: RequestInit = { method: "POST", headers };
    if (body !== undefined) init.body = JSON.stringify(body);
    if (opts?.signal !== undefined) init.signal = opts.signal;
    let response: Response;
    try {
      response = await fetchFn(baseUrl + path, init);
    } catch (cause) {
      const aborted = cause instanceof Error && cause.name === "AbortError";
      throw new RevalidateError(`${what}: ${aborted ? "aborted" : "no answer from the daemon"}`, {
        status: 0,
        code: aborted ? "aborted" : "network",
        cause,
      });
    }
    const text = await response.text();
    if (response.status === 304) return { response, value: undefined };
    if (!response.ok) throw errorOfAnswer(response.status, response.statusText, text, what);
    if (text === "") return { response, value: undefined };
    try {
      return { response, value: JSON.parse(text) as unknown };
    } catch (cause) {
      throw new RevalidateError(`${what}: the answer is not JSON`, {
        status: response.status,
        code: "bad_response",
        body: text,
        cause,
      });
    }
  }

  const numberHeader = (r: Response, name: string): number | null => {
    const v = r.headers.get(name);
    const n = v === null ? NaN : Number(v);
    return Number.isFinite(n) ? n : null;
  };

  async function read<T>(action: string, params?: unknown, opts?: RequestOptions & { ifNoneMatch?: string }) {
    const extra: Record<string, string> = opts?.ifNoneMatch === undefined ? {} : { "if-none-match": opts.ifNoneMatch };
    const { response, value } = await post(
      `/v1/resources/${encodeSegment(action)}`,
      params,
      opts,
      `read of ${action}`,
      extra,
    );
    return {
      data: value as T,
      status: response.status,
      etag: response.headers.get("etag"),
      version: numberHeader(response, "x-revalidate-version"),
      cacheStatus: response.headers.get("cache-status"),
      age: numberHeader(response, "age"),
    } satisfies ReadResult<T>;
  }

  const storeKey = (actions: readonly string[]) =>
    `revalidate:last-event-id ${baseUrl}${actions.length > 0 ? ` ${JSON.stringify(actions)}` : ""}`;
  const remembered = (actions: readonly string[]): string | undefined => {
    try {
      return storage.getItem(storeKey(actions)) ?? undefined;
    } catch {
      return undefined;
    }
  };

  function events<T>(onChange: (change: Change<T>) => void, opts: EventsOptions = {}): Unsubscribe {
    const ES = options.EventSource ?? (globalThis as { EventSource?: EventSourceConstructor }).EventSource;
    if (ES === undefined) {
      throw new TypeError("no EventSource here (Node 20): pass one in createClient({ EventSource })");
    }
    const actions = actionsOf(opts.actions);
    const key = storeKey(actions);
    let last: string | undefined =
      opts.lastEventId === undefined ? remembered(actions) : opts.lastEventId === null ? undefined : String(opts.lastEventId);
    let source: EventSourceLike | undefined;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let failures = 0;
    let stopped = false;

    const report = (error: unknown) => {
      if (opts.onError !== undefined) {
        opts.onError(error);
      } else if (!(error instanceof RevalidateError && error.code === "network")) {
        // As a browser reports a listener's exception: without breaking the feed.
        setTimeout(() => {
          throw error;
        });
      }
    };
    const deliver = (change: Change<T>) => {
      try {
        onChange(change);
      } catch (e) {
        report(e);
      }
    };
    const url = () => {
      const q = new URLSearchParams();
      for (const a of actions) q.append("action", a);
      if (last !== undefined) q.set("last_event_id", last);
      if (opts.includeData === true) q.set("include", "data");
      const s = q.toString();
      return `${baseUrl}/v1/events${s === "" ? "" : `?${s}`}`;
    };
    const reconnect = () => {
      source?.close();
      source = undefined;
      if (stopped || timer !== undefined) return;
      const ceiling = Math.min(maxDelay, initialDelay * 2 ** Math.min(failures, 30));
      failures += 1;
      const delay = ceiling / 2 + Math.random() * (ceiling / 2);
      timer = setTimeout(() => {
        timer = undefined;
        open();
      }, delay);
    };
    const open = () => {
      if (stopped) return;
      const es = new ES(url(), options.eventSourceInit);
      source = es;
      const current = () => source === es && !stopped;
      es.addEventListener("open", () => {
        if (!current()) return;
        failures = 0;
        opts.onOpen?.();
      });
      es.addEventListener("error", () => {
        if (!current()) return;
        // Close it: its own retry would reconnect with the URL's old last_event_id.
        reconnect();
        report(new RevalidateError("the change feed's connection was lost; reconnecting", { status: 0, code: "network" }));
      });
      es.addEventListener("change", (event) => {
        if (!current()) return;
        const wire = parse(event.data);
        if (!isWireChange(wire)) return;
        const id = event.lastEventId === "" ? undefined : event.lastEventId;
        deliver(changeOf<T>(wire, id, false));
        if (id !== undefined && current()) {
          last = id;
          try {
            storage.setItem(key, id);
          } catch {
            // storage full or denied: the id stays in memory
          }
        }
      });
      es.addEventListener("snapshot", (event) => {
        if (!current()) return;
        const wire = parse(event.data) as { queries?: unknown } | undefined;
        const queries = Array.isArray(wire?.queries) ? wire.queries.filter(isWireChange) : [];
        const changes = queries.map((q) => changeOf<T>(q, undefined, true));
        for (const c of changes) deliver(c);
        if (opts.onSnapshot !== undefined) {
          try {
            opts.onSnapshot(changes);
          } catch (e) {
            report(e);
          }
        }
      });
      es.addEventListener("shutdown", () => {
        if (!current()) return;
        reconnect();
      });
    };
    const unsubscribe = () => {
      stopped = true;
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
      source?.close();
      source = undefined;
      opts.signal?.removeEventListener("abort", unsubscribe);
    };
    if (opts.signal?.aborted === true) return () => {};
    opts.signal?.addEventListener("abort", unsubscribe);
    open();
    return unsubscribe;
  }

  return {
    baseUrl,
    async get<T>(action: string, params?: unknown, opts?: RequestOptions): Promise<T> {
      return (await read<T>(action, params, opts)).data;
    },
    read,
    async executeAction<T>(name: string, filters?: unknown, opts?: RequestOptions): Promise<T> {
      const { value } = await post(pathOf(name), filters, opts, `action ${name}`);
      return value as T;
    },
    events,
    lastEventId: (actions) => remembered(actionsOf(actions)),
  };
}
