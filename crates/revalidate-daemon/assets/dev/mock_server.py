#!/usr/bin/env python3
# Usage: python3 crates/revalidate-daemon/assets/dev/mock_server.py 8799
"""Development mock of the revalidate daemon's dashboard-facing HTTP API.

Python 3 standard library only. It listens on 127.0.0.1 (the port is the
first argument, 8799 by default) and serves:

  GET  /              ../dashboard.html (re-read on every request)
  GET  /v1/live       SSE, one `tick` event per second (docs/http-api.md)
  GET  /v1/stats      the current stats object
  GET  /v1/queries    the current queries list, sorted by key
  GET  /v1/network    the current network state
  GET  /healthz       "ok"
  POST /v1/invalidate bearer token `secret` (env MOCK_ADMIN_TOKEN overrides;
                      MOCK_ADMIN_TOKEN="" emulates "no token configured" -> 403)

Development-only helpers (not part of the daemon's contract):

  GET  /mock/outage?seconds=N   /v1/live drops its streams and answers 503
                                for N seconds (to see the dashboard's
                                "disconnected, retrying" banner)

The simulation: about a dozen queries over the resources node, process,
rule, office, workflow, notification, settings, system_health and
workflow_status; ages advance, stale queries are refreshed with at most 3
fetches in flight, some fetches fail, a transient query appears and vanishes
every minute, and the upstream is "offline" for 10 seconds every minute
(alternating reasons "errors" and "probe").
"""

import json
import os
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
DASHBOARD = os.path.normpath(os.path.join(HERE, "..", "dashboard.html"))
ADMIN_TOKEN = os.environ.get("MOCK_ADMIN_TOKEN", "secret")
MAX_CONCURRENT = 3
RNG = random.Random(int(os.environ.get("MOCK_SEED", "7")))

ERRORS = [
    "upstream timed out after 10000 ms",
    "HTTP 503 Service Unavailable from upstream",
    "bad data: expected an array at $.items",
    "connection refused (os error 111)",
    "HTTP 500 Internal Server Error: <html>oops & more</html>",
]


def now_ms():
    return int(time.time() * 1000)


def query_key(action, params):
    return action + json.dumps(params, sort_keys=True, separators=(",", ":"))


def fmt_staleness(ms):
    if ms is None:
        return "never"
    if ms == 0:
        return "always"
    if ms % 60000 == 0:
        return "%dm" % (ms // 60000)
    return "%ds" % (ms // 1000)


def zero_stats():
    return {
        "total_refreshes": 0,
        "successful_refreshes": 0,
        "failed_refreshes": 0,
        "retries": 0,
        "not_modified": 0,
        "bad_data": 0,
        "skipped_offline": 0,
        "bytes_fetched": 0,
        "total_refresh_time": 0.0,
        "average_refresh_time": 0.0,
        "last_refresh_time": None,
        "cache": {"fresh_hits": 0, "stale_hits": 0, "misses": 0},
        "active_queries": 0,
        "cached_queries": 0,
        "in_flight": 0,
        "max_concurrent_refreshes": MAX_CONCURRENT,
    }


class Query:
    def __init__(self, action, params, resource, staleness_ms, observers=1,
                 has_data=True, fail_first=0, lifetime_ms=None):
        self.action = action
        self.params = params
        self.resource = resource
        self.staleness_ms = staleness_ms
        self.key = query_key(action, params)
        self.observers = observers
        self.active = observers > 0
        t = now_ms()
        if has_data:
            span = staleness_ms if staleness_ms else 90000
            self.updated_at = t - RNG.randint(0, max(1000, span))
        else:
            self.updated_at = None
        self.version = RNG.randint(1, 9) if has_data else 0
        self.error_count = 0
        self.last_error = None
        self.last_error_at = None
        self.failed = False          # last fetch failed
        self.invalidated = False
        self.fetch_done_at = None    # set while a fetch is in flight
        self.fetch_ms = 0
        self.retry_at = 0
        self.fail_first = fail_first
        self.last_skip = 0
        self.expires_at = (t + lifetime_ms) if lifetime_ms else None

    def age(self, t):
        return None if self.updated_at is None else max(0, t - self.updated_at)

    def needs_refresh(self, t):
        if self.updated_at is None or self.invalidated or self.failed:
            return True
        if self.staleness_ms is None:
            return False
        return self.age(t) >= self.staleness_ms

    def status(self, t, online):
        if self.fetch_done_at is not None:
            return "fetching"
        if self.failed:
            return "error"
        if self.updated_at is None:
            return "paused" if not online else "empty"
        if self.needs_refresh(t):
            return "stale" if online else "paused"
        return "fresh"

    def to_json(self, t, online):
        age = self.age(t)
        if self.staleness_ms is None:
            next_check = None
        elif age is None:
            next_check = t
        else:
            next_check = self.updated_at + self.staleness_ms
        return {
            "key": self.key,
            "action": self.action,
            "params": self.params,
            "resource": self.resource,
            "staleness": fmt_staleness(self.staleness_ms),
            "staleness_ms": self.staleness_ms,
            "age_ms": age,
            "updated_at": self.updated_at,
            "status": self.status(t, online),
            "fetch_status": "fetching" if self.fetch_done_at is not None else "idle",
            "error_count": self.error_count,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "observers": self.observers,
            "active": self.active,
            "version": self.version,
            "next_check": next_check,
        }


class Sim:
    def __init__(self):
        self.lock = threading.Lock()
        self.started = now_ms()
        self.stats = zero_stats()
        self.per_resource = {}
        self.online = True
        self.reason = None
        self.since = self.started - 3600 * 1000
        self.consecutive_errors = 0
        self.outage_until = 0
        self.transient_n = 0
        m = 60000
        self.queries = {}
        for q in [
            Query("node.list", {}, "node", 1 * m, observers=2),
            Query("node.get", {"id": "n-17"}, "node", 2 * m),
            Query("process.list", {"status": "active"}, "process", 30000, observers=3),
            Query("process.list", {"page": "2", "status": "active"}, "process", 30000, observers=0),
            Query("process.get", {"id": "p-4711"}, "process", 10000),
            Query("rule.list", {}, "rule", 5 * m),
            Query("office.list", {}, "office", None, observers=0),
            Query("office.search", {"q": "<b>Smith & Co</b> \"HQ\""}, "office", 2 * m),
            Query("workflow.list", {"status": "running"}, "workflow", 1 * m, observers=2),
            Query("workflow.get", {"id": "wf-9"}, "workflow", 2 * m),
            Query("notification.list", {"unread": "true"}, "notification", 15000, observers=4),
            Query("notification.count", {}, "notification", 30000, has_data=False, fail_first=3),
            Query("settings.get", {}, "settings", 10 * m),
            Query("system_health.get", {}, "system_health", 0),
            Query("workflow_status.get", {"id": "wf-9"}, "workflow_status", 5000),
            Query("workflow_status.get", {"id": ["wf-9", "wf-12"]}, "workflow_status", 20000, observers=0),
        ]:
            self.queries[q.key] = q
        for q in self.queries.values():
            self.per_resource.setdefault(q.resource, zero_stats())

    # -- counters -------------------------------------------------------
    def bump(self, resource, field, n=1):
        for s in (self.stats, self.per_resource.setdefault(resource, zero_stats())):
            s[field] += n

    def bump_cache(self, resource, field):
        for s in (self.stats, self.per_resource.setdefault(resource, zero_stats())):
            s["cache"][field] += 1

    # -- one simulation step (every second) -------------------------------
    def step(self):
        with self.lock:
            t = now_ms()
            self._network(t)
            self._transients(t)
            in_flight = 0
            for q in self.queries.values():
                if q.fetch_done_at is not None and q.fetch_done_at <= t:
                    self._finish(q, t)
                if q.fetch_done_at is not None:
                    in_flight += 1
            for q in sorted(self.queries.values(), key=lambda q: q.age(t) or 10**12, reverse=True):
                if RNG.random() < 0.05:
                    q.observers = max(0, q.observers + RNG.choice([-1, 1]))
                    q.active = q.observers > 0
                if q.active and RNG.random() < 0.6:
                    st = q.status(t, self.online)
                    if q.updated_at is None or RNG.random() < 0.02:
                        self.bump_cache(q.resource, "misses")
                    elif st == "fresh":
                        self.bump_cache(q.resource, "fresh_hits")
                    else:
                        self.bump_cache(q.resource, "stale_hits")
                if q.fetch_done_at is not None:
                    continue
                wants = q.needs_refresh(t) or (q.staleness_ms == 0 and RNG.random() < 0.3)
                if not (wants and (q.active or q.updated_at is None or q.invalidated)):
                    continue
                if q.failed and t < q.retry_at:
                    continue
                if not self.online:
                    if t - q.last_skip >= 5000:
                        q.last_skip = t
                        self.bump(q.resource, "skipped_offline")
                    continue
                if in_flight >= MAX_CONCURRENT:
                    continue
                q.fetch_ms = RNG.choice([RNG.randint(40, 400), RNG.randint(150, 900), RNG.randint(800, 2600)])
                q.fetch_done_at = t + q.fetch_ms
                in_flight += 1
            self.stats["in_flight"] = in_flight
            for res, s in self.per_resource.items():
                s["in_flight"] = sum(1 for q in self.queries.values()
                                     if q.resource == res and q.fetch_done_at is not None)

    def _network(self, t):
        sec = (t - self.started) // 1000
        minute, pos = divmod(sec, 60)
        offline = 45 <= pos < 55
        if offline and self.online:
            self.online = False
            self.reason = "errors" if minute % 2 == 0 else "probe"
            self.since = t
            self.consecutive_errors = 3 if self.reason == "errors" else 0
        elif not offline and not self.online:
            self.online = True
            self.reason = None
            self.since = t
            self.consecutive_errors = 0
        if not self.online:
            # fetches in flight when the upstream goes away fail
            for q in self.queries.values():
                if q.fetch_done_at is not None and RNG.random() < 0.5:
                    q.fetch_done_at = t
                    q.fail_first = max(q.fail_first, 1)

    def _transients(self, t):
        sec = (t - self.started) // 1000
        if sec % 60 == 20:
            self.transient_n += 1
            q = Query("process.get", {"id": "p-%d" % (9000 + self.transient_n)}, "process",
                      10000, has_data=False, lifetime_ms=25000)
            self.queries.setdefault(q.key, q)
        for k in [k for k, q in self.queries.items() if q.expires_at and q.expires_at <= t]:
            del self.queries[k]

    def _finish(self, q, t):
        ms = float(q.fetch_ms)
        q.fetch_done_at = None
        self.bump(q.resource, "total_refreshes")
        self.bump(q.resource, "total_refresh_time", ms)
        for s in (self.stats, self.per_resource[q.resource]):
            s["average_refresh_time"] = round(s["total_refresh_time"] / s["total_refreshes"], 1)
            s["last_refresh_time"] = t
        fail = q.fail_first > 0 or not self.online or RNG.random() < 0.07
        if RNG.random() < 0.15:
            self.bump(q.resource, "retries")
        if fail:
            q.fail_first = max(0, q.fail_first - 1)
            self.bump(q.resource, "failed_refreshes")
            q.failed = True
            q.error_count += 1
            q.last_error = "offline: upstream unreachable" if not self.online else RNG.choice(ERRORS)
            if q.last_error.startswith("bad data"):
                self.bump(q.resource, "bad_data")
            q.last_error_at = t
            q.retry_at = t + 5000
        else:
            self.bump(q.resource, "successful_refreshes")
            if q.updated_at is not None and RNG.random() < 0.3:
                self.bump(q.resource, "not_modified")
            else:
                q.version += 1
                self.bump(q.resource, "bytes_fetched", RNG.randint(300, 48000))
            q.updated_at = t
            q.failed = False
            q.invalidated = False

    # -- snapshots ----------------------------------------------------------
    def _stats_json(self):
        s = json.loads(json.dumps(self.stats))
        s["active_queries"] = sum(1 for q in self.queries.values() if q.active)
        s["cached_queries"] = sum(1 for q in self.queries.values() if q.updated_at is not None)
        res = {}
        for name, rs in self.per_resource.items():
            r = json.loads(json.dumps(rs))
            r["active_queries"] = sum(1 for q in self.queries.values() if q.resource == name and q.active)
            r["cached_queries"] = sum(1 for q in self.queries.values()
                                      if q.resource == name and q.updated_at is not None)
            res[name] = r
        s["resources"] = res
        return s

    def snapshot(self):
        with self.lock:
            t = now_ms()
            return {
                "now": t,
                "stats": self._stats_json(),
                "network": self._network_json(),
                "queries": [q.to_json(t, self.online)
                            for q in sorted(self.queries.values(), key=lambda q: q.key)],
            }

    def _network_json(self):
        return {"online": self.online, "reason": self.reason, "since": self.since,
                "consecutive_errors": self.consecutive_errors}

    def network(self):
        with self.lock:
            return self._network_json()

    def invalidate(self, body):
        with self.lock:
            if body.get("all") is True:
                match = lambda q: True
            elif isinstance(body.get("action"), str) and "params" in body:
                key = query_key(body["action"], body["params"])
                match = lambda q: q.key == key
            elif isinstance(body.get("action"), str):
                match = lambda q: q.action == body["action"]
            elif isinstance(body.get("resource"), str):
                match = lambda q: q.resource == body["resource"]
            else:
                return None
            n = 0
            for q in self.queries.values():
                if match(q) and q.updated_at is not None:
                    q.invalidated = True
                    n += 1
            return n


SIM = Sim()


def ticker():
    while True:
        time.sleep(1.0 - (time.time() % 1.0))
        SIM.step()


class Handler(BaseHTTPRequestHandler):
    server_version = "revalidate-mock/0.1"

    def log_message(self, fmt, *args):
        if os.environ.get("MOCK_QUIET") != "1":
            sys.stderr.write("%s %s\n" % (self.log_date_time_string(), fmt % args))

    def send_json(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlsplit(self.path)
        path = url.path
        if path == "/":
            try:
                with open(DASHBOARD, "rb") as f:
                    data = f.read()
            except OSError as e:
                return self.send_json(500, {"error": "no_dashboard", "message": str(e)})
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)
        elif path == "/healthz":
            data = b"ok"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif path == "/v1/stats":
            self.send_json(200, SIM.snapshot()["stats"])
        elif path == "/v1/queries":
            self.send_json(200, SIM.snapshot()["queries"])
        elif path == "/v1/network":
            self.send_json(200, SIM.network())
        elif path == "/v1/live":
            self.live()
        elif path == "/mock/outage":
            secs = float(parse_qs(url.query).get("seconds", ["10"])[0])
            SIM.outage_until = time.time() + secs
            self.send_json(200, {"outage_seconds": secs})
        else:
            self.send_json(404, {"error": "not_found", "message": "no route for " + path})

    def live(self):
        if time.time() < SIM.outage_until:
            return self.send_json(503, {"error": "unavailable", "message": "mock outage"})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            self.wfile.write(b"retry: 2000\n\n")
            while time.time() >= SIM.outage_until:
                payload = json.dumps(SIM.snapshot(), separators=(",", ":"))
                self.wfile.write(b"event: tick\ndata: " + payload.encode() + b"\n\n")
                self.wfile.flush()
                time.sleep(1.0 - (time.time() % 1.0) + 0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def do_POST(self):
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if path != "/v1/invalidate":
            return self.send_json(404, {"error": "not_found", "message": "no route for " + path})
        if not ADMIN_TOKEN:
            return self.send_json(403, {
                "error": "admin_disabled",
                "message": "invalidation is disabled: set server.admin_token_env to the name "
                           "of an environment variable holding the admin token"})
        auth = self.headers.get("Authorization") or ""
        if auth != "Bearer " + ADMIN_TOKEN:
            return self.send_json(401, {"error": "unauthorized",
                                        "message": "missing or wrong bearer token"})
        try:
            body = json.loads(raw.decode() or "null")
        except ValueError as e:
            return self.send_json(400, {"error": "bad_request", "message": "invalid JSON: %s" % e})
        n = SIM.invalidate(body) if isinstance(body, dict) else None
        if n is None:
            return self.send_json(400, {
                "error": "bad_request",
                "message": 'expected {"all": true}, {"action": …}, {"action": …, "params": {…}} '
                           'or {"resource": …}'})
        self.send_json(200, {"invalidated": n})


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8799
    threading.Thread(target=ticker, daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    sys.stderr.write("revalidate mock on http://127.0.0.1:%d/ (admin token %r)\n" % (port, ADMIN_TOKEN))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
