"""A fake Resend API on 127.0.0.1 for the tests and benchmarks: real HTTP, Resend's shapes.

`POST /emails` and `POST /emails/batch` (at most 100, `x-batch-validation: strict|permissive`),
and, like Resend's webhooks, events about the emails it accepted POSTed to an endpoint, signed the
way Svix signs them (`post_events`),
idempotency keys (same key and body: the same answer and no second delivery; same key and another
body: 409), a rate limit answering 429 with `retry-after` and `ratelimit-*` headers, and switches
to inject 5xx answers, slow answers (client timeouts) and refused connections.

Run it alone: python tests/fake_resend.py --port 8787 [--rate 5]  (GET /_stats for counts)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson  # decodes a 7 MB batch in a third of json's time: the fake's CPU is this machine's too

EMAIL_RE = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
QUOTA_NAMES = {"daily": "daily_quota_exceeded", "monthly": "monthly_quota_exceeded"}


@dataclass
class Delivery:
    id: str
    to: str
    subject: str
    html: str | None
    text: str | None
    headers: dict
    tags: list
    key: str | None


@dataclass
class Switches:
    fail_ratio: float = 0.0  # answer 500 without doing anything
    fail_after_ratio: float = 0.0  # do the work, then answer 500 anyway
    fail_next: int = 0  # the next N requests answer 500
    delay: float = 0.0  # seconds from a request's arrival to its answer (over the client's timeout: a timeout)
    delay_next: int = 0  # only the next N requests are delayed (0: all, while delay is set)
    quota: str | None = None  # "daily" or "monthly": every request answers 429 with that name
    storm_next: int = 0  # the next N requests answer 429 whatever the rate
    storm_retry_after: float = 1.0  # the retry-after those 429s carry
    crash_after_processing: int = 0  # the next N requests do the work, then drop the connection unanswered
    reject: set[str] = field(default_factory=set)  # addresses validation refuses


@dataclass
class State:
    api_key: str = "re_test_key"
    rate: float | None = None  # requests per second; None: unlimited
    keep_bodies: bool = True  # False for benchmarks: count deliveries, keep no content
    parse: bool = True  # False: answer without decoding the body (to measure the client alone)
    switches: Switches = field(default_factory=Switches)
    deliveries: list[Delivery] = field(default_factory=list)
    per_address: Counter = field(default_factory=Counter)
    idempotency: dict[str, tuple[str, int, dict]] = field(default_factory=dict)
    in_progress: set[str] = field(default_factory=set)
    requests: Counter = field(default_factory=Counter)  # by status code
    dropped: int = 0  # connections dropped after the work was done (crash_after_processing)
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of each POST, in order
    window_start: float = 0.0
    window_count: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(1234))
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeResend:
    """The server; `start()` runs it in a thread. `refuse()`/`accept()` close and reopen its port."""

    def __init__(self, port: int = 0, *, rate: float | None = None, keep_bodies: bool = True,
                 parse: bool = True):
        self.state = State(rate=rate, keep_bodies=keep_bodies, parse=parse)
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def switches(self) -> Switches:
        return self.state.switches

    def start(self) -> "FakeResend":
        state = self.state
        handler = type("Handler", (_Handler,), {"state": state})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def refuse(self) -> None:
        """Close the port: connections are refused until `accept()`."""
        self.stop()

    def accept(self) -> None:
        self.start()

    def addresses(self) -> Counter:
        return Counter(self.state.per_address)

    def for_address(self, address: str) -> list[Delivery]:
        return [d for d in self.state.deliveries if d.to == address]

    def post_events(self, endpoint: str, secret: str, kinds: dict[str, list[str]]) -> list[int]:
        """POST Resend's events about accepted emails to `endpoint`, signed with `secret`
        (`whsec_...`): `kinds` maps an address to event types in order ("email.delivered",
        "email.opened", "email.clicked" (its first https link), "email.bounced" (permanent),
        "email.bounced.transient", "email.complained"). The answers' status codes, in order."""
        import requests

        statuses = []
        for delivery in list(self.state.deliveries):
            for kind in kinds.get(delivery.to, []):
                body = json.dumps(event_payload(delivery, kind))
                answer = requests.post(endpoint, data=body.encode(), timeout=30,
                                       headers={"content-type": "application/json",
                                                **svix_headers(secret, f"msg_{uuid.uuid4().hex}", body)})
                statuses.append(answer.status_code)
        return statuses


def event_payload(delivery: Delivery, kind: str) -> dict:
    """An event as Resend sends it (https://resend.com/docs/webhooks), about `delivery`."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    data = {"email_id": delivery.id, "created_at": now, "from": "sender@example.com", "to": [delivery.to],
            "subject": delivery.subject, "message_id": f"<{delivery.id}@resend.dev>"}
    type_ = kind
    if kind.startswith("email.bounced"):
        type_ = "email.bounced"
        data["bounce"] = {"type": "Transient", "subType": "MailboxFull",
                          "message": "The recipient's mailbox is full."} if kind.endswith(".transient") else \
            {"type": "Permanent", "subType": "General",
             "message": "The recipient's email provider sent a hard bounce message."}
    if kind == "email.clicked":
        links = re.findall(r'href="(https://[^"]+)"', delivery.html or "")
        data["click"] = {"ipAddress": "192.0.2.1", "link": links[0] if links else "https://example.com/",
                         "timestamp": now, "userAgent": "Mozilla/5.0"}
    return {"type": type_, "created_at": now, "data": data}


def svix_headers(secret: str, svix_id: str, body: str, timestamp: int | None = None) -> dict:
    """The headers Svix sends: an HMAC-SHA256 of `id.timestamp.body` with the base64 secret."""
    import base64
    import hmac

    timestamp = int(time.time()) if timestamp is None else timestamp
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{svix_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return {"svix-id": svix_id, "svix-timestamp": str(timestamp),
            "svix-signature": "v1," + base64.b64encode(digest).decode()}


class _Handler(BaseHTTPRequestHandler):
    state: State
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # keep-alive answers must not wait for a delayed ACK

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/_stats":
            with self.state.lock:
                stats = {"deliveries": sum(self.state.per_address.values()),
                         "addresses": len(self.state.per_address),
                         "duplicates": sum(n - 1 for n in self.state.per_address.values() if n > 1),
                         "requests": dict(self.state.requests)}
            return self._answer(200, stats)
        self._answer(404, _error(404, "not_found", "Not found"))

    def do_POST(self) -> None:  # noqa: N802
        state, switches = self.state, self.state.switches
        arrived = time.monotonic()
        self._rate_headers = {}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.headers.get("Authorization") != f"Bearer {state.api_key}":
            return self._answer(401 if not self.headers.get("Authorization") else 403,
                                _error(403, "invalid_api_key", "API key is invalid"))
        key = self.headers.get("Idempotency-Key")
        with state.lock:
            state.arrivals.append(time.monotonic())
            if switches.quota:
                return self._answer(429, _error(429, QUOTA_NAMES[switches.quota],
                                                f"You have reached your {switches.quota} email sending quota."))
            if switches.storm_next > 0:
                switches.storm_next -= 1
                return self._answer(429, _error(429, "rate_limit_exceeded", "Too many requests."),
                                    {"retry-after": f"{switches.storm_retry_after:g}"})
            limited = self._rate_limited()
            if limited:
                return self._answer(429, _error(429, "rate_limit_exceeded",
                                                "Too many requests. You can only make N requests per second."),
                                    limited)
            fail = switches.fail_next > 0 or state.rng.random() < switches.fail_ratio
            switches.fail_next = max(0, switches.fail_next - 1)
            fail_after = state.rng.random() < switches.fail_after_ratio
            delay = switches.delay
            if switches.delay_next > 0:
                switches.delay_next -= 1
                if switches.delay_next == 0:
                    switches.delay = 0.0
            if key is not None and key in state.in_progress:
                return self._answer(409, _error(409, "concurrent_idempotent_requests",
                                                "Same idempotency key used while the original request is "
                                                "still in progress."))
            if key is not None:
                state.in_progress.add(key)
            crash = not fail and switches.crash_after_processing > 0  # counts only requests it drops
            if crash:
                switches.crash_after_processing -= 1
        if not state.parse:  # one id per email, found without decoding anything
            return self._answer(200, {"data": [{"id": str(uuid.uuid4())} for _ in range(raw.count(b'"subject"'))]})
        try:
            if fail:
                return self._answer(500, _error(500, "internal_server_error", "An unexpected error occurred."))
            decoded = _decode(raw)  # while the answer is delayed, as a provider's latency would hide it
            if delay:  # a client with a shorter timeout gives up; the work still happens
                time.sleep(max(0.0, delay - (time.monotonic() - arrived)))
            status, body = self._process(raw, key, decoded)
        finally:
            with state.lock:
                state.in_progress.discard(key)
        if crash:
            with state.lock:
                state.dropped += 1
            self.close_connection = True
            self.connection.shutdown(2)
            return None
        if fail_after:
            return self._answer(500, _error(500, "internal_server_error", "An unexpected error occurred."))
        self._answer(status, body)

    def _rate_limited(self) -> dict | None:
        state = self.state
        if not state.rate:
            return None
        now = time.monotonic()
        if now - state.window_start >= 1.0:
            state.window_start, state.window_count = now, 0
        limit = max(1, int(state.rate))
        reset = max(0.0, 1.0 - (now - state.window_start))
        if state.window_count >= limit:
            return {"retry-after": f"{reset:.3f}", "ratelimit-limit": str(limit), "ratelimit-remaining": "0",
                    "ratelimit-reset": f"{reset:.3f}"}
        state.window_count += 1
        self._rate_headers = {"ratelimit-limit": str(limit),
                              "ratelimit-remaining": str(limit - state.window_count),
                              "ratelimit-reset": f"{reset:.3f}"}
        return None

    def _process(self, raw: bytes, key: str | None, decoded) -> tuple[int, dict]:
        state = self.state
        digest, payload = decoded
        if key is not None:
            if not 1 <= len(key) <= 256:
                return 400, _error(400, "invalid_idempotency_key", "The key must be between 1-256 chars.")
            with state.lock:
                if key in state.idempotency:
                    seen_digest, status, body = state.idempotency[key]
                    if seen_digest != digest:
                        return 409, _error(409, "invalid_idempotent_request",
                                           "Same idempotency key used with a different request payload.")
                    return status, body
        if payload is INVALID:
            return 422, _error(422, "validation_error", "Invalid JSON body.")
        if self.path == "/emails/batch":
            status, body = self._batch(payload, key)
        elif self.path == "/emails":
            status, body = self._single(payload, key)
        else:
            return 404, _error(404, "not_found", "Not found")
        if key is not None and status < 500:
            with state.lock:
                state.idempotency[key] = (digest, status, body)
        return status, body

    def _batch(self, payload, key) -> tuple[int, dict]:
        if not isinstance(payload, list) or not payload:
            return 422, _error(422, "validation_error", "The request body must be a non-empty array.")
        if len(payload) > 100:
            return 422, _error(422, "validation_error", "Too many emails: the limit is 100 per batch.")
        permissive = self.headers.get("x-batch-validation") == "permissive"
        problems = [(i, _invalid(email, self.state.switches.reject)) for i, email in enumerate(payload)]
        errors = [{"index": i, "message": p} for i, p in problems if p]
        if errors and not permissive:
            return 422, _error(422, "validation_error", errors[0]["message"])
        data = [{"id": self._deliver(email, key)} for (i, p), email in zip(problems, payload) if not p]
        return 200, ({"data": data, "errors": errors} if permissive else {"data": data})

    def _single(self, payload, key) -> tuple[int, dict]:
        problem = _invalid(payload, self.state.switches.reject) if isinstance(payload, dict) \
            else "The request body must be an object."
        if problem:
            return 422, _error(422, "validation_error", problem)
        return 200, {"id": self._deliver(payload, key)}

    def _deliver(self, email: dict, key: str | None) -> str:
        state = self.state
        delivery_id = str(uuid.uuid4())
        to = email["to"] if isinstance(email["to"], str) else email["to"][0]
        with state.lock:
            state.per_address[to] += 1
            if state.keep_bodies:
                state.deliveries.append(Delivery(delivery_id, to, email.get("subject", ""), email.get("html"),
                                                 email.get("text"), email.get("headers") or {},
                                                 email.get("tags") or [], key))
        return delivery_id

    def _answer(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.state.requests[status] += 1
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in {**getattr(self, "_rate_headers", {}), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


INVALID = object()  # a body that is not JSON


def _decode(raw: bytes) -> tuple[str, object]:
    """A request body's digest (an idempotency key's request must not change) and its JSON."""
    try:
        payload = orjson.loads(raw)
    except ValueError:
        payload = INVALID
    return hashlib.sha256(raw).hexdigest(), payload


def _error(status: int, name: str, message: str) -> dict:
    return {"statusCode": status, "name": name, "message": message}


def _invalid(email, reject: set[str]) -> str | None:
    """Resend's validation, the parts that matter here."""
    if not isinstance(email, dict):
        return "Each email must be an object."
    for required in ("from", "to", "subject"):
        if not email.get(required):
            return f"The `{required}` field is missing."
    recipients = [email["to"]] if isinstance(email["to"], str) else email["to"]
    if not isinstance(recipients, list) or not 1 <= len(recipients) <= 50:
        return "The `to` field must hold 1 to 50 addresses."
    for address in recipients:
        if not EMAIL_RE.match(str(address)) or address in reject:
            return "Invalid `to` field. The email address needs to follow the `email@example.com` format."
    if not email.get("html") and not email.get("text"):
        return "Either `html` or `text` must be provided."
    for tag in email.get("tags") or []:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", str(tag.get("name", ""))) or \
                not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", str(tag.get("value", ""))):
            return "Tags may only contain ASCII letters, numbers, underscores, or dashes."
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake Resend API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--rate", type=float, default=None, help="requests per second (default: no limit)")
    parser.add_argument("--keep-bodies", action="store_true", help="keep every email's content")
    parser.add_argument("--no-parse", action="store_true",
                        help="answer without decoding requests: measures what a client alone can do")
    args = parser.parse_args()
    server = FakeResend(args.port, rate=args.rate, keep_bodies=args.keep_bodies, parse=not args.no_parse).start()
    print(f"fake Resend on {server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
