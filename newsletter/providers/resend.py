"""Resend through its official SDK: the batch endpoint, idempotency keys, permissive validation.

The SDK keeps its key and base URL in module globals; this is the one place that sets them.
"""

from __future__ import annotations

import re
import socket
import threading
from urllib.parse import urlsplit

import orjson
import requests
import resend
from resend.exceptions import ResendError
from resend.http_client import HTTPClient



class Part:
    """A message's HTML or plain text, made only as the request body is written (`_dumps`): a
    batch in memory holds one reader's 70 KB of HTML at a time, not a hundred of them. From the
    send engine's template, it is written already encoded (`Personal.json`)."""

    __slots__ = ("message", "html")

    def __init__(self, message: Message, *, html: bool):
        self.message, self.html = message, html

    def __str__(self) -> str:
        return self.message.html if self.html else self.message.text

    def encoded(self) -> str | orjson.Fragment:
        template = self.message.template
        if template is None:
            return str(self)
        return orjson.Fragment((template.html if self.html else template.text).json(self.message.links))


def _part(value: object) -> str | orjson.Fragment:
    if isinstance(value, Part):
        return value.encoded()
    raise TypeError(f"cannot send a {type(value).__name__} in a request to Resend")


def _dumps(value) -> bytes:
    return orjson.dumps(value, default=_part)


from ..errors import ProviderError, QuotaExceeded, RateLimited, Rejected, Unavailable
from . import BatchResult, Message, Outcome

QUOTAS = {"daily_quota_exceeded", "monthly_quota_exceeded"}
TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class ResendProvider:
    name = "resend"
    idempotent = True  # the same idempotency key within 24 h is delivered once

    def __init__(self, api_key: str, *, timeout: float = 30.0, api_url: str | None = None):
        resend.api_key = api_key
        if api_url:  # the SDK reads $RESEND_API_URL only when first imported
            resend.api_url = api_url.rstrip("/")
        self.client = SessionClient(timeout)
        resend.default_http_client = self.client

    def send(self, messages: list[Message], idempotency_key: str) -> BatchResult:
        params = [_params(m) for m in messages]
        try:
            response = resend.Batch.send(params, {"idempotency_key": idempotency_key,
                                                  "batch_validation": "permissive"})
        except ResendError as e:
            unreachable = self.client.last_failure()
            raise (Unavailable(unreachable) if unreachable else _translate(e)) from None
        errors = {int(e["index"]): e.get("message", "rejected") for e in response.get("errors") or []}
        created = iter(response.get("data") or [])
        outcomes = []
        for index in range(len(messages)):
            if index in errors:
                outcomes.append(Outcome(False, error=errors[index]))
            else:
                item = next(created, None)
                outcomes.append(Outcome(True, message_id=item["id"]) if item else
                                Outcome(False, error="Resend returned no id for this email", retry=True))
        return BatchResult(outcomes, wait=_wait_hint(response.get("http_headers") or {}))

    def close(self) -> None:
        self.client.close()


class SessionClient(HTTPClient):
    """The SDK's HTTP client, with one kept-alive connection per thread instead of a new
    connection (and TLS handshake) for every request, and a faster JSON encoder."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.local = threading.local()  # .session, and .failure: why the last request got no answer

    def _session(self) -> requests.Session:
        if getattr(self.local, "session", None) is None:
            self.local.session = requests.Session()
        return self.local.session

    def request(self, method, url, headers, json=None, files=None, data=None):
        headers = dict(headers)
        body = None
        if json is not None:
            body = _dumps(json)
            headers["Content-Type"] = "application/json"
        self.local.failure = None
        try:
            response = self._session().request(method, url, headers=headers, data=body if body is not None else data,
                                               files=files, timeout=self.timeout)
        except requests.RequestException as e:
            self.local.session = None  # start the next request on a fresh connection
            # The SDK turns any exception into "HttpClientError, HTTP 500", as if Resend had
            # answered: keep what really happened for ResendProvider.send to report.
            self.local.failure = _unreachable(e, url, self.timeout)
            raise RuntimeError(self.local.failure) from e
        return response.content, response.status_code, response.headers

    def last_failure(self) -> str | None:
        """Why this thread's last request got no answer from Resend, or None if it got one."""
        return getattr(self.local, "failure", None)

    def close(self) -> None:
        session = getattr(self.local, "session", None)
        if session is not None:
            session.close()


def _unreachable(error: requests.RequestException, url: str, timeout: float) -> str:
    """A request that got no answer, in words, naming the server (scheme, host and port only)."""
    parts = urlsplit(url)
    where = f"Resend at {parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
    causes = _causes(error)
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return f"cannot reach {where}: connection refused"
    if any(isinstance(c, socket.gaierror) for c in causes):
        return f"cannot reach {where}: the host name does not resolve"
    if isinstance(error, requests.ConnectTimeout):
        return f"cannot reach {where}: no connection within {timeout:g} s"
    if isinstance(error, requests.Timeout):
        return f"{where} did not answer within {timeout:g} s"
    if isinstance(error, requests.ConnectionError):
        reason = next((c for c in reversed(causes) if isinstance(c, OSError) and c.strerror), None)
        return f"cannot reach {where}: " + (reason.strerror.lower() if reason else "the connection failed")
    return f"request to {where} failed ({type(error).__name__})"


def _causes(error: BaseException) -> list[BaseException]:
    """`error` and what lies under it: requests wraps urllib3, which wraps the socket's error."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [error]
    while todo and len(seen) < 20:
        e = todo.pop()
        if e in seen:
            continue
        seen.append(e)
        todo += [c for c in (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args)
                 if isinstance(c, BaseException)]
    return seen


def _params(message: Message) -> dict:
    params = {"from": message.sender, "to": [message.to], "subject": message.subject,
              "html": Part(message, html=True), "text": Part(message, html=False), "headers": message.headers,
              "tags": [{"name": TAG_UNSAFE.sub("_", k), "value": TAG_UNSAFE.sub("_", v)[:256]}
                       for k, v in message.tags.items()]}
    if message.reply_to:
        params["reply_to"] = message.reply_to
    return params


def _header(headers: dict, name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name), None)


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _wait_hint(headers: dict) -> float:
    """Resend's ratelimit-* headers: when nothing remains in this window, wait for its reset."""
    remaining = _seconds(_header(headers, "ratelimit-remaining"))
    if remaining is not None and remaining < 1:
        return _seconds(_header(headers, "ratelimit-reset")) or 1.0
    return 0.0


def _translate(e: ResendError) -> ProviderError:
    code = int(e.code) if str(e.code).isdigit() else 500
    kind = e.error_type or ""
    detail = f"Resend: {e.message} ({kind}, HTTP {code})"
    if code == 429 and kind in QUOTAS:
        return QuotaExceeded(detail)
    if code == 429:
        wait = _seconds(_header(e.headers, "retry-after")) or _seconds(_header(e.headers, "ratelimit-reset"))
        return RateLimited(detail, retry_after=wait)
    if code == 409 and kind == "concurrent_idempotent_requests":
        return RateLimited(detail, retry_after=1.0)
    if code >= 500 or kind == "HttpClientError":
        return Unavailable(detail)
    return Rejected(detail, reason=kind)
