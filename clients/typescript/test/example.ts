// The READMEs' five-line example, type-checked by the build against the
// real @tanstack/query-core (package.test.ts checks that the lines match).

import { QueryClient, QueryObserver } from "@tanstack/query-core";

import { createClient } from "../src/index.js";
import { connectQueryClient } from "../src/tanstack.js";

export function example(queryClient: QueryClient) {
const revalidate = createClient({ baseUrl: "/revalidate" });         // the daemon, behind the app's origin
const active = { queryKey: ["process.list", { status: "active" }], queryFn: () => revalidate.get("process.list", { status: "active" }) };
connectQueryClient(queryClient, revalidate);                          // useQuery(active) now follows the daemon: no refetch
  return new QueryObserver(queryClient, active);
}
