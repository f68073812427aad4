export {
  createClient,
  encodeSegment,
  type Change,
  type ClientOptions,
  type EventSourceConstructor,
  type EventSourceLike,
  type EventsOptions,
  type HeadersOption,
  type MessageEventLike,
  type ReadResult,
  type RequestOptions,
  type RevalidateClient,
  type StorageLike,
  type Unsubscribe,
} from "./client.js";
export { RevalidateError, isRevalidateError } from "./errors.js";
export { asActionClient, type ActionClient } from "./actions.js";
