"""Every link a reader gets, built and read in one place.

    BASE_URL/u/TOKEN          unsubscribe: a page (GET), or at once (POST, RFC 8058 one-click)
    BASE_URL/p/TOKEN          the reader's preferences
    BASE_URL/issues/SLUG      the issue on the web; `?v=VIEW` shows the variant a reader got
    BASE_URL/confirm/SIGNED   double opt-in: confirms a signup

TOKEN is the reader's secret (`subscribers.new_token`). VIEW is an HMAC of the issue and the
variant under the secret key (`config.load_secret_key`): it can show one variant of one issue and
carries nothing of the reader, whose unsubscribe token must not travel in a link that ends up in
web logs, Referer headers and forwarded emails.
"""

from __future__ import annotations

import base64
import html as html_lib
import hashlib
import hmac
import re
from typing import Iterable
from urllib.parse import quote, urlsplit, urlunsplit

import orjson

PATHS = {"unsubscribe": "u", "preferences": "p", "issue": "issues", "confirm": "confirm"}
PATH_RE = re.compile(r"^/(u|p|issues|confirm)/([A-Za-z0-9._~-]{1,200})/?$")
VIEW_PURPOSE = b"newsletter-view\x00"  # keeps these HMACs apart from any other use of the key
VIEW_BYTES = 16  # 128 bits: unguessable, and short in a link
SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_.~-]+")  # what quote() leaves alone: reader tokens are this
# Where a rendered email takes each reader's own links: `Personal.fill` puts them in.
LINK_NAMES = ("unsubscribe_url", "preferences_url", "browser_url")
PLACEHOLDERS = {name: f"%%{name}%%" for name in LINK_NAMES}
PLACEHOLDER_RE = re.compile("%%(" + "|".join(LINK_NAMES) + ")%%")


class Links:
    """The links of one newsletter (`base_url`); with the secret key, view links per variant."""

    def __init__(self, base_url: str, key: bytes | None = None):
        self.base = base_url.rstrip("/")
        self.key = key
        self._views: dict[tuple[str, str], str] = {}

    def unsubscribe(self, token: str) -> str:
        return f"{self.base}/u/{_segment(token)}"

    def preferences(self, token: str) -> str:
        return f"{self.base}/p/{_segment(token)}"

    def issue(self, slug: str, view: str | None = None) -> str:
        url = f"{self.base}/issues/{_segment(slug)}"
        return f"{url}?v={view}" if view else url

    def confirm(self, signed: str) -> str:
        return f"{self.base}/confirm/{_segment(signed)}"

    def view(self, slug: str, variant: str) -> str | None:
        """The token that shows `variant` of issue `slug` (None without a key: the whole issue)."""
        return view_token(self.key, slug, variant) if self.key is not None else None

    def for_reader(self, slug: str, token: str, variant: str) -> dict[str, str]:
        """The values of an email's link placeholders for one reader (see PLACEHOLDERS)."""
        # Once per reader of a send: the browser link is the same for a whole variant.
        browser = self._views.get((slug, variant))
        if browser is None:
            browser = self._views[slug, variant] = self.issue(slug, self.view(slug, variant))
        segment = _segment(token)
        return {"unsubscribe_url": f"{self.base}/u/{segment}", "preferences_url": f"{self.base}/p/{segment}",
                "browser_url": browser}

    def for_preview(self, slug: str) -> dict[str, str]:
        """Sample links for previews and test copies: they belong to no reader."""
        return {"unsubscribe_url": f"{self.base}/u/preview", "preferences_url": f"{self.base}/p/preview",
                "browser_url": self.issue(slug)}


def _segment(value: str) -> str:
    """`value` as one path segment of a URL."""
    return value if SAFE_SEGMENT.fullmatch(value) else quote(value, safe="")


def view_token(key: bytes, slug: str, variant: str) -> str:
    digest = hmac.new(key, VIEW_PURPOSE + f"{slug}\x00{variant}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:VIEW_BYTES]).decode().rstrip("=")


def find_view(key: bytes, slug: str, view: str, variants: Iterable[str]) -> str | None:
    """The variant of `slug` that `view` shows, or None if it shows none of `variants`."""
    if not view.isascii():
        return None
    found = None
    for variant in variants:  # every candidate compared in constant time, none skipped
        if hmac.compare_digest(view_token(key, slug, variant), view):
            found = variant
    return found


def as_uri(url: str) -> str:
    """`url` in ASCII, as a header must carry it (RFC 2369, RFC 8058): the host in IDNA, the path
    percent-encoded as UTF-8 (RFC 3987, 3.1). The same address a browser makes of it."""
    if url.isascii():
        return url
    parts = urlsplit(url)
    host = (parts.hostname or "").encode("idna").decode("ascii")
    host = f"[{host}]" if ":" in host else host  # an IPv6 address
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, quote(parts.path, safe="/%:@!$&'()*+,;=~"), parts.query, parts.fragment))


def parse(path: str) -> tuple[str, str] | None:
    """(`unsubscribe` | `preferences` | `issue` | `confirm`, the value) for a link's path."""
    match = PATH_RE.match(path)
    if match is None:
        return None
    kind = next(name for name, prefix in PATHS.items() if prefix == match.group(1))
    return kind, match.group(2)


class Personal:
    """A rendered variant (HTML or text) split at its reader placeholders once, so that each
    reader's copy costs one join instead of a search through the whole email."""

    def __init__(self, text: str, *, html: bool = False):
        self.parts = PLACEHOLDER_RE.split(text)  # literal, name, literal, name, ..., literal
        self.names = self.parts[1::2]
        self.html = html
        self._json: list[bytes] | None = None  # the literals as JSON, once asked for

    def fill(self, values: dict[str, str]) -> str:
        parts = self.parts.copy()
        parts[1::2] = self.values(values)
        return "".join(parts)

    def values(self, values: dict[str, str]) -> list[str]:
        """What `fill` puts in each placeholder, in order."""
        if self.html:  # links land in href="...": never let a value end the attribute
            return [_attribute(values[name]) for name in self.names]
        return [values[name] for name in self.names]

    def json(self, values: dict[str, str]) -> bytes:
        """`fill(values)` as a JSON string, the very bytes `orjson.dumps` writes for it: the
        literals are encoded once per variant, so a reader's copy in a request body costs a join
        instead of escaping 70 KB again (JSON escapes character by character, and placeholders
        are ASCII, so the pieces join into the whole)."""
        if self._json is None:
            self._json = [orjson.dumps(literal)[1:-1] for literal in self.parts[0::2]]
        parts: list[bytes] = [b""] * len(self.parts)
        parts[0::2] = self._json
        parts[1::2] = [orjson.dumps(value)[1:-1] for value in self.values(values)]
        return b'"' + b"".join(parts) + b'"'

    @property
    def source(self) -> str:
        """The text it was made from, placeholders and all (what a run stores of its variant)."""
        parts = self.parts.copy()
        parts[1::2] = [PLACEHOLDERS[name] for name in self.names]
        return "".join(parts)


def _attribute(value: str) -> str:
    """`value` escaped for an HTML attribute; links almost never need it, so look first."""
    if "&" in value or '"' in value or "<" in value or ">" in value or "'" in value:
        return html_lib.escape(value, quote=True)
    return value


def personalize(text: str, links: dict[str, str], *, html: bool = False) -> str:
    """Fill the reader's links into a rendered variant (HTML, escaped, or text)."""
    return Personal(text, html=html).fill(links)
