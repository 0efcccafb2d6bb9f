"""A `Digest` becomes an email: Jinja2 renders MJML, mjml-python compiles it, premailer inlines CSS.

One rendering per variant (a set of categories), never one per reader: reader links are left
as `%%name%%` placeholders that `personalize` fills in.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import jinja2
import mjml
from markupsafe import Markup

from . import plaintext
from .config import Settings
from .digest import LINK_STYLE, REF_RE, Digest, Footnote, Section
from .errors import RenderError
from .inliner import Inliner
from .links import LINK_NAMES, PLACEHOLDER_RE, PLACEHOLDERS, Links, Personal, personalize  # noqa: F401  (theirs too)

DOCTYPE = "<!doctype html>"
SIZE_WARNING = 90 * 1024  # Gmail clips messages at about 102 KB
REF_STYLE = "font-size:12px;line-height:0"
REF_LINK_STYLE = f"{LINK_STYLE};text-decoration:none;font-weight:600;padding:0 1px"
# ` id="..."`; written to start with its literal, which the regex engine then finds fast.
ANCHOR_RE = re.compile(r'id="(?<=\sid=")([^"]+)"')
IMAGE_TAG = '<img class="img" '  # as digest/markdown.py writes a Markdown image


@dataclass(frozen=True)
class Layout:
    """The email's one column, in pixels: the template draws the page with these numbers, and
    images are coded at the column's width (Outlook for Windows shows an image at its `width`
    attribute and ignores CSS `max-width`)."""

    width: int = 640  # the page on a desktop screen
    gutter: int = 32  # padding either side of the text

    @property
    def column(self) -> int:
        return self.width - 2 * self.gutter


LAYOUT = Layout()
IMAGE_SIZED = f'<img class="img" width="{LAYOUT.column}" '

logging.getLogger("cssutils").setLevel(logging.CRITICAL)


def default_templates_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "templates", here / "templates"):  # checkout, installed wheel
        if candidate.is_dir():
            return candidate
    raise RenderError("the templates folder that ships with newsletter is missing")


@dataclass(frozen=True)
class Note:
    number: int
    footnote: Footnote

    @property
    def anchor(self) -> str:
        return f"fn-{self.number}"


@dataclass
class Variant:
    """What one set of categories keeps of a digest, with its notes numbered 1..n."""

    digest: Digest
    categories: frozenset[str] | None
    sections: list[Section]
    notes: list[Note]
    placement: dict[int, list[Note]]  # section index -> notes listed right after it

    @property
    def key(self) -> str:
        return "all" if self.categories is None else "+".join(sorted(self.categories)) or "none"

    @property
    def stories(self) -> list[Section]:
        return [s for s in self.sections if s.kind == "story"]


@dataclass
class Email:
    subject: str
    preheader: str
    html: str
    text: str
    variant: Variant

    @property
    def size(self) -> int:
        return len(self.html.encode("utf-8"))

    def warnings(self) -> list[str]:
        return size_warnings(self.size)


def size_warnings(size: int) -> list[str]:
    """What to say about an email of `size` bytes of HTML."""
    if size > SIZE_WARNING:
        return [f"the HTML is {size / 1024:.0f} KB; Gmail clips messages above about 102 KB"]
    return []


def select(digest: Digest, categories: Iterable[str] | None = None) -> Variant:
    """Keep the sections for `categories` (None: all) and number the notes they still cite."""
    wanted = None if categories is None else frozenset(categories)
    sections = [s for s in digest.sections
                if wanted is None or s.categories is None or wanted & set(s.categories)]
    if wanted is not None and sections and sections[0] is digest.opening:
        sections[0] = _opening_for(digest, sections, wanted)
    notes: dict[str, Note] = {}
    placement: dict[int, list[Note]] = {}
    for index, section in enumerate(sections):
        for label in section.cited_labels:
            if label not in notes:
                notes[label] = Note(len(notes) + 1, digest.footnotes[label])
                home = index if digest.footnote_mode == "inline" else len(sections)
                placement.setdefault(home, []).append(notes[label])
    return Variant(digest, wanted, sections, list(notes.values()), placement)


def _opening_for(digest: Digest, kept: list[Section], wanted: frozenset[str]) -> Section:
    """The opening with the TL;DR lines a reader of `wanted` should read: a line with its own
    categories is kept for readers of one of them; any other line is dropped when every note it
    cites belongs only to stories this reader does not get (it talks about those stories)."""
    opening = digest.opening
    if not opening.tldr_html:
        return opening
    in_tldr = {m.group(1) for line in opening.tldr_html for m in REF_RE.finditer(line)}
    body_only = dataclasses.replace(opening, tldr_html=[], tldr_text=[], tldr_categories=[])
    kept_ids = {id(s) for s in kept}
    cited_kept = {label for s in [body_only, *kept[1:]] for label in s.cited_labels}
    cited_dropped = {label for s in digest.stories if id(s) not in kept_ids for label in s.cited_labels}
    keep = []
    for html, own in zip(opening.tldr_html, opening.tldr_categories or [None] * len(opening.tldr_html)):
        labels = {m.group(1) for m in REF_RE.finditer(html)} & in_tldr
        if own is not None:
            keep.append(bool(wanted & set(own)))
        else:
            keep.append(not labels or any(l in cited_kept or l not in cited_dropped for l in labels))
    if all(keep):
        return opening
    pick = lambda items: [item for item, k in zip(items, keep) if k]  # noqa: E731
    return dataclasses.replace(opening, tldr_html=pick(opening.tldr_html), tldr_text=pick(opening.tldr_text),
                               tldr_categories=pick(opening.tldr_categories or [None] * len(keep)))


def empty_tldr(variant: Variant) -> bool:
    """The digest has a TL;DR box, and none of its lines is for this variant's readers."""
    opening = variant.digest.opening
    return bool(opening.tldr_html) and bool(variant.sections) and variant.sections[0].kind == "opening" \
        and not variant.sections[0].tldr_html


class Renderer:
    """Renders digests with one settings object; reuse it, it caches templates and parsed CSS."""

    def __init__(self, settings: Settings):
        self.settings = settings
        folders = [default_templates_dir()]
        if settings.templates_dir:
            if not Path(settings.templates_dir).is_dir():
                raise RenderError(f"templates folder {settings.templates_dir} does not exist")
            folders.insert(0, Path(settings.templates_dir))
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader([str(f) for f in folders]),
            autoescape=jinja2.select_autoescape(["mjml", "html"], default_for_string=False),
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        )
        self.env.filters["compact_css"] = compact_css
        self.env.globals.update(wrap=plaintext.wrap, fill=plaintext.fill)
        self.css = self._load("email/inline.css")

    def _load(self, name: str) -> str:
        try:
            return self.env.loader.get_source(self.env, name)[0]
        except jinja2.TemplateNotFound:
            raise RenderError(f"template {name} not found") from None

    def render(self, digest: Digest, categories: Iterable[str] | None = None) -> Email:
        """The email for readers of `categories` (None: every story), links still placeholders."""
        variant = select(digest, categories)
        try:
            compiled = self.compile(self.mjml(variant))
            html = self.inline(compiled)
            text = self.text(variant)
            check_whole(compiled, html, text)
        except RenderError as e:
            raise RenderError(f"{digest.path}: variant {variant.key}: {e}") from None
        return Email(subject=digest.subject_for(variant.categories), preheader=self.preheader(variant),
                     html=html, text=text, variant=variant)

    def preheader(self, variant: Variant) -> str:
        return variant.digest.preheader_for(variant.categories)

    def context(self, variant: Variant, html: bool) -> dict:
        digest, settings = variant.digest, self.settings
        backrefs: dict[str, list[str]] = {}  # label -> anchors of the places citing it, in order
        numbering = {note.footnote.label: note for note in variant.notes}
        sections = [_section_view(s, numbering, backrefs, html) for s in variant.sections]
        notes_after = {i: [_note_view(n, backrefs.get(n.footnote.label, []), html) for n in notes]
                       for i, notes in variant.placement.items()}
        shown = variant.categories if variant.categories is not None else {
            c for s in variant.stories for c in (s.categories or ())}
        return {
            "settings": settings, "digest": digest, "variant": variant,
            "date": digest.date.strftime("%B %-d, %Y") if digest.date else "",
            "categories": [c.name for c in settings.categories if c.slug in shown],
            "preheader": self.preheader(variant),
            "sections": sections, "notes_after": notes_after,
            "end_notes": notes_after.get(len(variant.sections), []),
            "links": PLACEHOLDERS, "layout": LAYOUT,
        }

    def mjml(self, variant: Variant) -> str:
        return self._render_template("email/digest.mjml", self.context(variant, html=True))

    def text(self, variant: Variant) -> str:
        text = self._render_template("email/digest.txt", self.context(variant, html=False))
        return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"

    def _render_template(self, name: str, context: dict) -> str:
        try:
            return self.env.get_template(name).render(context)
        except jinja2.TemplateError as e:
            where = f"{e.filename}:{e.lineno}: " if getattr(e, "lineno", None) else f"{name}: "
            raise RenderError(f"{where}{e.message}") from None

    def compile(self, source: str) -> str:
        try:
            html = mjml.mjml2html(source, fonts={}, disable_comments=True)
        except ValueError as e:
            raise RenderError(f"MJML could not compile the email (is some raw HTML in the digest broken?): {e}") from None
        return finish(html)

    def inline(self, html: str) -> str:
        inlined = Inliner.for_css(self.css).inline(html)
        return f"{DOCTYPE}\n{inlined}" if inlined.lstrip()[:9].lower() != "<!doctype" else inlined


def compact_css(css: str) -> str:
    """CSS without comments and needless spaces: the <head> styles cost bytes in every email."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    css = re.sub(r"\s+", " ", css)
    css = re.sub(r" ?([{};,]) ?", r"\1", css)
    return css.replace(": ", ":").replace(" !important", "!important").strip()


def finish(compiled: str) -> str:
    """What the HTML an MJML compiler made needs before inlining (mjml-python's or the official one's)."""
    # premailer must leave MJML's own <style> blocks (media queries, client resets) alone;
    # only the CSS of inline.css is inlined.
    html = compiled.replace("<style", '<style data-premailer="ignore"')
    # Gmail turns <body> into a <div> after a <u>, keeping the id: `u + #body a` in dark.css
    # stops it from colouring the dates and addresses it links by itself.
    return html.replace("<body", '<body id="body"', 1)


def check_whole(compiled: str, inlined: str, text: str) -> None:
    """Refuse an email the inliner cut short, or one without an unsubscribe link.

    lxml (inside premailer) stops parsing at about 256 levels of nesting without an error and
    returns what it read so far: the rest of the email, footer and unsubscribe link included,
    would vanish while everything reports success. Every anchor and reader link of the compiled
    email must still be there after inlining.
    """
    kept = set(ANCHOR_RE.findall(inlined))
    lost = [a for a in ANCHOR_RE.findall(compiled) if a not in kept]
    if lost or PLACEHOLDER_RE.findall(compiled) != PLACEHOLDER_RE.findall(inlined):
        what = f"anchor {lost[0]!r}" if lost else "a reader link"
        raise RenderError(f"the email came out of CSS inlining incomplete ({what} and what follows "
                          "is missing; is some HTML nested too deeply?)")
    for part, name in ((inlined, "HTML"), (text, "plain-text")):
        if PLACEHOLDERS["unsubscribe_url"] not in part:
            raise RenderError(f"the {name} part has no unsubscribe link ({{{{ links.unsubscribe_url }}}})")


def preview_links(settings: Settings, digest: Digest) -> dict[str, str]:
    """Sample reader links for previews and test copies."""
    return Links(settings.base_url).for_preview(digest.slug)


# -- view models: sections with their footnote references numbered -------------------------------

def _section_view(section: Section, numbering: dict[str, Note], backrefs: dict[str, list[str]],
                  html: bool) -> dict:
    def fill(value: str) -> str:
        out = _number_refs(value, numbering, backrefs).replace(IMAGE_TAG, IMAGE_SIZED) if html else \
            REF_RE.sub(lambda m: str(numbering[m.group(1)].number), value)
        return Markup(out) if html else out

    suffix = "html" if html else "text"
    view = {"kind": section.kind, "anchor": section.anchor}
    # The order matters: references are numbered in the order the template shows them.
    view["title"] = fill(getattr(section, f"title_{suffix}"))
    view["source"] = fill(getattr(section, f"source_{suffix}"))
    view["tldr"] = [fill(item) for item in getattr(section, f"tldr_{suffix}")]
    view["body"] = fill(getattr(section, f"body_{suffix}"))
    view["entries"] = [{key: fill(getattr(item, f"{key}_{suffix}")) for key in ("title", "source", "body")}
                     for item in section.entries]
    return view


def _number_refs(html: str, numbering: dict[str, Note], backrefs: dict[str, list[str]]) -> str:
    def ref(match: re.Match) -> str:
        note = numbering[match.group(1)]
        anchors = backrefs.setdefault(note.footnote.label, [])
        anchor = f"fnref-{note.number}-{len(anchors) + 1}"
        anchors.append(anchor)
        # Styled here rather than by premailer: references are the most frequent element, and
        # each element premailer styles costs it time.
        return (f'<sup class="fnref" style="{REF_STYLE}"><a href="#{note.anchor}" name="{anchor}" '
                f'id="{anchor}" style="{REF_LINK_STYLE}" aria-label="Note {note.number}">{note.number}</a></sup>')
    return REF_RE.sub(ref, html)


def _note_view(note: Note, backrefs: list[str], html: bool) -> dict:
    fn = note.footnote
    view = {"number": note.number, "anchor": note.anchor, "url": fn.url, "title": fn.title,
            "domain": fn.domain, "backrefs": backrefs}
    if html:
        view |= {"source": Markup(fn.source_html), "quote": Markup(fn.quote_html)}
    else:
        view |= {"source": fn.source_text, "quote": fn.quote_text}
    return view
