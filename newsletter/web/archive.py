"""The web archive: every sent issue as a web page, and an Atom feed of them.

    GET /issues/                  the sent issues, newest first; `?category=SLUG` keeps those a
                                  reader of that topic got (a story on it, or one for everyone);
                                  an unknown topic: status 404, with every issue and a notice
    GET /issues/SLUG              the whole issue; `?v=VIEW` (the email's "view in your browser"
                                  link) the variant that reader got, with a note on where to
                                  change it. A `v` that is no view of this issue (forged, cut
                                  short by a mail client) shows the whole issue: a forwarded
                                  link still reads. Not sent yet: the app's 404
    GET /feed.xml                 Atom, the 20 newest issues, each whole

Pages are rendered from the text each issue was sent with (see `newsletter/archive.py`), with
the email's view model (`Renderer.context`: the same sections, the same footnote numbers per
variant) and the same sanitized HTML, less the inline styles made for email clients: the page's
Content-Security-Policy allows no `style` attribute, and web.css styles it in light and dark.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import xml.etree.ElementTree as ET
from functools import cached_property

from flask import Blueprint, Response, abort, current_app, render_template, request
from markupsafe import Markup

from ..archive import Archive, SentIssue
from ..digest import Digest
from ..errors import DigestError
from ..links import PATHS
from ..render import Renderer, select
from ..send import ALL, categories_of
from . import context

log = logging.getLogger("newsletter.web")
blueprint = Blueprint("archive", __name__)
ISSUES = f"/{PATHS['issue']}"  # the link scheme is links.py's
CACHE = "public, max-age=300"  # a resend with --again shows within five minutes
FEED_ENTRIES = 20
ATOM = "http://www.w3.org/2005/Atom"
XML_BASE = "{http://www.w3.org/XML/1998/namespace}base"
# A start tag as the sanitizer writes it (every attribute value in double quotes, `"` escaped),
# and a style attribute in one: the page's CSP blocks these, and each would be reported.
START_TAG_RE = re.compile(r'<[a-zA-Z][^<>"]*(?:"[^"]*"[^<>"]*)*>')
STYLE_RE = re.compile(r'\sstyle="[^"]*"')
NOT_XML_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")  # no XML 1.0 document holds these


class Shelf:
    """What the archive keeps per app: the store of sent issues, and one renderer."""

    def __init__(self, archive: Archive):
        self.archive = archive

    @cached_property
    def renderer(self) -> Renderer:
        return Renderer(self.archive.settings)


@blueprint.record_once
def _setup(state) -> None:
    app_context = state.app.extensions["newsletter"]
    state.app.extensions["archive"] = Shelf(Archive(app_context.subscribers.engine, app_context.settings))


def shelf() -> Shelf:
    return current_app.extensions["archive"]


# -- routes ---------------------------------------------------------------------------------------

@blueprint.get(f"{ISSUES}/")
def index():
    archive, settings = shelf().archive, context().settings
    sent = archive.issues()
    wanted = request.args.get("category")
    chosen = settings.category(wanted) if wanted else None
    status, notice = 200, None
    if wanted and chosen is None:
        status, notice = 404, "There is no such topic (any more): here is every issue."
    listed = [(issue, archive.summary(issue)) for issue in sent]
    if chosen is not None:
        listed = [(issue, summary) for issue, summary in listed if summary.for_category(chosen.slug)]
    page = render_template("issues.html", listed=listed, chosen=chosen, notice=notice, any_sent=bool(sent),
                           categories=settings.categories, long_date=long_date)
    return cached(Response(page, status), status == 200)


@blueprint.get(f"{ISSUES}/<slug>")
def issue(slug: str):
    archive = shelf().archive
    found = archive.issue(slug)
    if found is None:
        abort(404)
    digest = readable(found)
    view = request.args.get("v")  # security.headers makes every page with one no-store
    variant = archive.view_variant(found, digest, view, context().key) if view else None
    article = Markup(article_html(found, digest, variant or ALL))
    page = render_template("issue.html", digest=digest, article=article, personal=variant is not None,
                           canonical=context().links.issue(found.slug))
    return cached(Response(page), not view)


@blueprint.get("/feed.xml")
def feed():
    archive = shelf().archive
    newest = archive.issues()[:FEED_ENTRIES]
    key = ("feed", tuple((i.slug, i.digest_sha256, i.first_sent, i.updated_at) for i in newest))
    body = archive.pages.get(key, lambda: atom(newest))
    return cached(Response(body, mimetype="application/atom+xml; charset=utf-8"), True)


# -- pages ----------------------------------------------------------------------------------------

def readable(issue: SentIssue) -> Digest:
    try:
        return shelf().archive.digest(issue)
    except DigestError as e:
        log.error("issue %s as sent no longer reads with the current settings: %s",
                  issue.slug, e.problems[0] if e.problems else e)
        abort(500)


def article_html(issue: SentIssue, digest: Digest, variant: str, *, headline: bool = True) -> str:
    """The issue's article (as `variant` readers got it), rendered once per version and variant."""
    def render() -> str:
        view = shelf().renderer.context(select(digest, categories_of(variant)), html=True)
        for name in ("sections", "notes_after", "end_notes"):
            view[name] = for_the_web(view[name])
        return render_template("issue_article.html", headline=headline, **view)
    return shelf().archive.pages.get((issue.slug, issue.digest_sha256, variant, headline), render)


def for_the_web(value):
    """The email's view model without its inline styles, which email clients need and the web
    page's CSP refuses. The HTML is the sanitizer's output, whose start tags START_TAG_RE reads."""
    if isinstance(value, Markup):
        return Markup(START_TAG_RE.sub(lambda tag: STYLE_RE.sub("", tag.group()), str(value)))
    if isinstance(value, dict):
        return {key: for_the_web(item) for key, item in value.items()}
    if isinstance(value, list):
        return [for_the_web(item) for item in value]
    return value


def cached(response: Response, public: bool) -> Response:
    if public:
        response.headers["Cache-Control"] = CACHE
    return response


def long_date(day: dt.date) -> str:
    return f"{day:%B} {day.day}, {day.year}"


# -- the feed -------------------------------------------------------------------------------------

def atom(newest: list[SentIssue]) -> bytes:
    """The Atom feed (RFC 4287) of `newest`, each entry the whole issue."""
    settings, links = context().settings, context().links
    root = ET.Element("feed", xmlns=ATOM)
    _text(root, "id", f"{links.base}{ISSUES}/")
    _text(root, "title", settings.name)
    updated = max((_updated(i) for i in newest), default=None)
    _text(root, "updated", _stamp(updated or dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)))
    ET.SubElement(root, "link", rel="self", type="application/atom+xml", href=f"{links.base}/feed.xml")
    ET.SubElement(root, "link", rel="alternate", type="text/html", href=f"{links.base}{ISSUES}/")
    _text(ET.SubElement(root, "author"), "name", settings.name)
    for issue in newest:
        try:
            digest = shelf().archive.digest(issue)
        except DigestError:
            continue  # logged where the list reads it; the rest of the feed still serves
        url = links.issue(issue.slug)
        entry = ET.SubElement(root, "entry", {XML_BASE: url})  # #fn-3 in the content: the page's note
        _text(entry, "id", url)
        _text(entry, "title", issue.title)
        _text(entry, "published", _stamp(issue.first_sent))
        _text(entry, "updated", _stamp(_updated(issue)))
        ET.SubElement(entry, "link", rel="alternate", type="text/html", href=url)
        if digest.author:
            _text(ET.SubElement(entry, "author"), "name", digest.author)
        summary = shelf().archive.summary(issue).summary
        if summary:
            _text(entry, "summary", summary)
        _text(entry, "content", article_html(issue, digest, ALL, headline=False), type="html")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _text(parent: ET.Element, tag: str, text: str, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attributes)
    element.text = NOT_XML_RE.sub("", text)  # ElementTree escapes &, < and >, not these
    return element


def _updated(issue: SentIssue) -> dt.datetime:
    """When the entry last changed: its first sending, or a later change of its text."""
    return max(issue.first_sent, issue.updated_at)


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
