/**
 * The one error type of the client.
 *
 * - An answer that is not 2xx: `status` is its HTTP status, `body` the
 *   parsed JSON body (or its text when it is not JSON), `code` the daemon's
 *   stable `error` code (`unknown_action`, `upstream_failed`, `offline`, …;
 *   see docs/http-api.md, "Errors") when the body has one, else `"http_<status>"`;
 *   `kind` the daemon's `kind` field when there is one (`network`, `timeout`,
 *   `rejected`, `failed`, `bad_data`, `offline`).
 * - No answer at all (a refused connection, an abort): `status` is 0,
 *   `code` is `"network"` (or `"aborted"`), `cause` the platform's error.
 * - A 2xx answer whose body is not JSON: `code` is `"bad_response"`.
 */
export class RevalidateError extends Error {
  /** The HTTP status; 0 when there was no answer. */
  readonly status: number;
  /** A stable code to branch on. */
  readonly code: string;
  /** The daemon's `kind` field (how the upstream failed), when it gave one. */
  readonly kind: string | undefined;
  /** The answer's body: parsed JSON, or the text when it is not JSON. */
  readonly body: unknown;

  constructor(
    message: string,
    fields: { status: number; code: string; kind?: string | undefined; body?: unknown; cause?: unknown },
  ) {
    super(message, fields.cause === undefined ? undefined : { cause: fields.cause });
    this.name = "RevalidateError";
    this.status = fields.status;
    this.code = fields.code;
    this.kind = fields.kind;
    this.body = fields.body;
  }
}

/** Whether `e` is a {@link RevalidateError} (also across copies of this package). */
export function isRevalidateError(e: unknown): e is RevalidateError {
  return e instanceof RevalidateError || (e instanceof Error && e.name === "RevalidateError" && "status" in e);
}

/** The error for a non-2xx answer whose body was `text`. */
export function errorOfAnswer(status: number, statusText: string, text: string, what: string): RevalidateError {
  let body: unknown = text;
  try {
    body = text === "" ? undefined : JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  const fields = body !== null && typeof body === "object" ? (body as Record<string, unknown>) : {};
  const code = typeof fields["error"] === "string" ? fields["error"] : `http_${status}`;
  const kind = typeof fields["kind"] === "string" ? fields["kind"] : undefined;
  const detail = typeof fields["message"] === "string" ? fields["message"] : statusText || "no message";
  return new RevalidateError(`${what}: ${status} ${code}: ${detail}`, { status, code, kind, body });
}
