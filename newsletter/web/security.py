"""What every page of the reader app shares for safety: headers, form tokens, client addresses.

Form tokens (CSRF) are signed, not stored: a token names what the form does and whose link it
sits on (a hash of the reader's secret, never the secret), and expires. A page loaded from
`/p/TOKEN` can only post back to that reader's own link, and nobody without the reader's link can
make one. The RFC 8058 one-click POST and the signup form take none (see their routes).
"""

from __future__ import annotations

import hashlib

from flask import Response, current_app, request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from markupsafe import Markup

CSRF_FIELD = "csrf"
CSRF_MAX_AGE = 7 * 24 * 3600  # a preferences page left open for a week still saves
CSP = ("default-src 'none'; style-src 'self'; img-src 'self' https: http: data:; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def headers(response: Response) -> Response:
    """Every answer: no inline script, no framing, no sniffing, no Referer (reader links carry a
    secret in their path, and a page's links must not pass it on)."""
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    if request.blueprint == "readers" or request.args.get("v"):
        response.headers["Cache-Control"] = "no-store"
    return response


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="newsletter-form")


def _subject(secret: str) -> str:
    return hashlib.sha256(b"newsletter-form\x00" + secret.encode()).hexdigest()[:32]


def csrf_token(purpose: str, secret: str) -> str:
    """A token for a form that does `purpose` on the link whose secret is `secret`."""
    return _serializer().dumps([purpose, _subject(secret)])


def csrf_field(purpose: str, secret: str) -> Markup:
    return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD,
                                                                       csrf_token(purpose, secret))


def csrf_ok(purpose: str, secret: str, value: str | None = None) -> bool:
    """True if the posted form carries a token made for `purpose` on this link, not too old."""
    value = request.form.get(CSRF_FIELD, "") if value is None else value
    if not value or len(value) > 512:
        return False
    try:
        got = _serializer().loads(value, max_age=CSRF_MAX_AGE)
    except BadSignature:  # also SignatureExpired
        return False
    return got == [purpose, _subject(secret)]


def signed(purpose: str, value, max_age: int | None = None, token: str | None = None):
    """Sign `value` for `purpose` (token=None), or read a signed `token` back (None if it is bad
    or older than `max_age` seconds)."""
    serializer = URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=f"newsletter-{purpose}")
    if token is None:
        return serializer.dumps(value)
    try:
        return serializer.loads(token, max_age=max_age)
    except BadSignature:
        return None


def client_ip() -> str | None:
    """The client's address: the peer's, or the one ProxyFix took from X-Forwarded-For when
    proxies are configured (`proxy_hops`)."""
    return request.remote_addr


def masked(email: str) -> str:
    """`ana@example.com` as `a••@example.com`: enough for a reader to recognise, little for
    anyone looking over their shoulder."""
    local, _, domain = email.rpartition("@")
    return f"{local[:1]}{'•' * min(max(len(local) - 1, 2), 6)}@{domain}"
