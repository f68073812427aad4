import type { RevalidateClient } from "./client.js";

/** The original app's ActionClient interface: one call per action, resolving to the parsed JSON. */
export interface ActionClient {
  executeAction<T = unknown>(name: string, filters?: unknown): Promise<T>;
}

/**
 * `client` as the app's own ActionClient: `executeAction(name, filters)`
 * posts `filters` to the action's own path on the daemon
 * (`POST {baseUrl}/actions/{name}` by default, see `actionPath`), which
 * serves reads cache-first and forwards mutations; it resolves to the
 * parsed JSON and rejects with a `RevalidateError` (`status`, `code`,
 * `kind`, `body`: the JSON error) on a non-2xx answer. Code written for
 * the original ActionClient runs unchanged.
 */
export function asActionClient(client: RevalidateClient): ActionClient {
  return {
    executeAction: <T = unknown>(name: string, filters?: unknown) => client.executeAction<T>(name, filters ?? {}),
  };
}
