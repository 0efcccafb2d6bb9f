"""Raw HTML in a digest, made fit for email: an allow-list applied by nh3 (ammonia).

Every fragment a digest renders to (a title, a source line, a TL;DR item, a body, a note) goes
through `clean` as a whole, not tag by tag: an opening `<span>` and its closing tag are often in
different Markdown tokens, and only the whole fragment can come out balanced. Before that,
`Inspection` walks the fragment's tokens, reading raw HTML roughly as a browser would (`tags`), to
say with a line what `clean` will remove and to refuse nesting that would cut the email short.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import nh3
from markdown_it.token import Token

from .errors import shorten

if TYPE_CHECKING:
    from .digest import Checker

# Links are the most frequent element of a digest; styling them here spares premailer (which
# costs per styled element) most of its work. Every link gets it, the writer's own <a> too.
LINK_STYLE = "color:#0b57d0"

# lxml, which premailer parses with, silently stops reading about 256 levels deep, and the email
# template already puts a story about 20 levels deep. 100 levels inside one fragment leaves room
# for custom templates, and keeps nh3 fast: its parser takes time quadratic in the depth of nested
# block elements (100,000 nested <div>s take two minutes).
MAX_DEPTH = 100

# What our own Markdown rendering produces, plus common tags that are safe and render in email.
TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "cite", "code", "dd", "del", "div", "dl", "dt",
    "em", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd",
    "li", "mark", "ol", "p", "pre", "q", "s", "samp", "small", "span", "strong", "sub", "sup",
    "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul", "var", "wbr",
}
# Tags whose content means nothing (or harm) as text: removed with everything inside them.
DROPPED_WITH_CONTENT = {
    "applet", "embed", "iframe", "math", "noembed", "noframes", "noscript", "object", "script",
    "style", "svg", "template", "textarea", "title", "xmp",
}
ATTRIBUTES = {
    "*": {"title", "lang", "dir"},
    "a": {"href"}, "img": {"src", "alt", "width", "height", "class"}, "blockquote": {"class"},
    "code": {"class"}, "ol": {"start"}, "p": {"align"}, "div": {"align"},
    "td": {"colspan", "rowspan", "align"}, "th": {"colspan", "rowspan", "align"},
}
# `style` is not allowed: CSS values can carry expression() and url(javascript:...), and no
# filter of ours would be as sure as leaving it out. Classes only where our own CSS uses them.
CLASSES = {"blockquote": re.compile(r"pull"), "img": re.compile(r"img"),
           "code": re.compile(r"language-[\w+#.-]+")}
NUMBER_RE = re.compile(r"\d{1,4}%?")
URL_SCHEMES = {"http", "https", "mailto"}
SCHEME_RE = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*):")
URL_NOISE_RE = re.compile(r"[\t\n\r]")  # browsers drop these inside URLs: java\tscript: is javascript:
C0_AND_SPACE = "".join(map(chr, range(0x21)))  # and these around them

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "keygen", "link", "meta",
        "param", "source", "track", "wbr"}
RAW_TEXT = {"iframe", "noembed", "noframes", "noscript", "plaintext", "script", "style", "textarea",
            "title", "xmp"}  # their content is text up to the closing tag, never tags
SIBLINGS = {"dd", "dt", "li", "option", "p", "td", "th", "tr"}  # <p>a<p>b: the second closes the first
# A closing tag does not reach past these to close what is open outside them: in
# <p><object>...</p>, the </p> leaves the object (and all that follows) inside it.
SCOPE_MARKERS = {"applet", "caption", "marquee", "object", "table", "td", "template", "th"}

# Raw HTML blocks that, in CommonMark, run on to their end marker, however far away it is.
BLOCK_OPENING_RE = re.compile(r" {0,3}(<!--|<\?|<!\[CDATA\[|<![a-z]|<(script|pre|style|textarea)(?=[\s>]|$))",
                              re.I)
BLOCK_ENDS = (("<!--", "-->"), ("<?", "?>"), ("<![cdata[", "]]>"), ("<!", ">"))
PLACEHOLDER_RE = re.compile("\x02([^\x03]*)\x03")
NUMBERED_RE = re.compile("\x02([0-9]+)\x03")


def url_allowed(url: str) -> bool:
    """Links and images work in an email only as http(s) and mailto URLs, or #anchors in it."""
    url = URL_NOISE_RE.sub("", url).strip(C0_AND_SPACE)
    scheme = SCHEME_RE.match(url)
    if scheme:
        return scheme.group(1).lower() in URL_SCHEMES
    return url.startswith("#")  # relative links lead nowhere in an inbox


def kept_value(tag: str, attribute: str, value: str) -> str | None:
    """The value an allowed attribute keeps (None: the attribute goes)."""
    if attribute in ("href", "src"):
        return value if url_allowed(value) else None
    if attribute == "class":
        allowed = CLASSES.get(tag)
        kept = [c for c in value.split() if allowed and allowed.fullmatch(c)]
        return " ".join(kept) or None
    if attribute in ("width", "height", "colspan", "rowspan", "start"):
        return value if NUMBER_RE.fullmatch(value.strip()) else None
    return value


def _filter(tag: str, attribute: str, value: str) -> str | None:
    if tag == "a" and attribute == "style":
        return value  # ours, set on every link by the cleaner
    return kept_value(tag, attribute, value)


CLEANER = nh3.Cleaner(
    tags=TAGS, clean_content_tags=DROPPED_WITH_CONTENT, attributes=ATTRIBUTES,
    attribute_filter=_filter, url_schemes=URL_SCHEMES, link_rel=None, strip_comments=True,
    set_tag_attribute_values={"a": {"style": LINK_STYLE}},
)


def clean(fragment: str) -> str:
    """The fragment with only allowed tags, attributes and links; footnote placeholders kept."""
    labels: list[str] = []

    def number(match: re.Match) -> str:
        labels.append(match.group(1))
        return f"\x02{len(labels) - 1}\x03"
    # A label is the writer's text (`[^a&b]`): the cleaner would escape it. Numbers pass as they are.
    cleaned = CLEANER.clean(PLACEHOLDER_RE.sub(number, fragment))
    return NUMBERED_RE.sub(lambda m: f"\x02{labels[int(m.group(1))]}\x03", cleaned)


# -- reading the writer's raw HTML ---------------------------------------------------------------

@dataclass
class Tag:
    name: str  # lower case
    closing: bool
    attributes: list[tuple[str, str]]  # (name in lower case, value with entities decoded)
    offset: int  # where the tag starts in the raw HTML
    runs_on: bool = False  # <script> and the like whose closing tag is not in this piece of HTML


TAG_START_RE = re.compile(r"<(?:(/?)([A-Za-z][^\t\n\f\r />]*)|!--|[!?/])")
ATTRIBUTE_RE = re.compile(r"[\t\n\f\r /]*([^\t\n\f\r />][^\t\n\f\r /=>]*)?")
EQUALS_RE = re.compile(r"[\t\n\f\r ]*=[\t\n\f\r ]*")
UNQUOTED_RE = re.compile(r"[^\t\n\f\r >]*")
_END_TAG_RE: dict[str, re.Pattern] = {}


def tags(raw: str) -> Iterator[Tag]:
    """The tags of raw HTML in order, comments and raw text skipped; one pass, linear time."""
    pos, size = 0, len(raw)
    while (start := TAG_START_RE.search(raw, pos)) is not None:
        if start.group(2) is None:  # a comment, <!doctype>, <?...>: nothing that renders
            comment = raw.startswith("<!--", start.start())
            end = raw.find("-->" if comment else ">", start.end())
            if end < 0:
                return
            pos = end + (3 if comment else 1)
            continue
        tag = Tag(start.group(2).lower(), bool(start.group(1)), [], start.start())
        pos = start.end()
        while (attribute := ATTRIBUTE_RE.match(raw, pos)).group(1) is not None:
            pos, value = attribute.end(), ""
            equals = EQUALS_RE.match(raw, pos)
            if equals:
                pos = equals.end()
                if pos < size and raw[pos] in "\"'":
                    close = raw.find(raw[pos], pos + 1)
                    if close < 0:
                        return  # the quote runs to the end: browsers drop the whole tag
                    value, pos = raw[pos + 1:close], close + 1
                else:
                    unquoted = UNQUOTED_RE.match(raw, pos)
                    value, pos = unquoted.group(), unquoted.end()
            tag.attributes.append((attribute.group(1).lower(), html.unescape(value)))
        pos = attribute.end()
        if pos >= size:
            return  # the tag never closes: browsers drop it
        pos += 1  # the '>'
        if tag.name in RAW_TEXT and not tag.closing:
            end_tag = end_of_raw_text(tag.name, raw, pos)
            tag.runs_on = end_tag < 0
            yield tag
            if tag.runs_on:
                return
            pos = end_tag
        else:
            yield tag


def end_of_raw_text(name: str, raw: str, start: int = 0) -> int:
    """Where the closing tag of raw text element `name` starts (-1: not in `raw`)."""
    pattern = _END_TAG_RE.setdefault(name, re.compile(rf"</{name}(?=[\t\n\f\r />]|$)", re.I))
    found = pattern.search(raw, start)
    return found.start() if found else -1


def removals(tag: Tag) -> list[str]:
    """What `clean` removes of this tag, as messages for the writer."""
    if tag.closing:
        return []
    if tag.name in DROPPED_WITH_CONTENT:
        return [f"removed <{tag.name}> element with its content (not allowed in an email)"]
    if tag.name not in TAGS:
        kept = "" if tag.name in VOID else ", kept its content"
        return [f"removed <{shorten(tag.name, 40)}> tag{kept} (not allowed in an email)"]
    allowed = ATTRIBUTES["*"] | ATTRIBUTES.get(tag.name, set())
    found = []
    for name, value in tag.attributes:
        if name not in allowed:
            found.append(f"removed {shorten(name, 40)} attribute from <{tag.name}>")
        elif kept_value(tag.name, name, value) != value:
            found.append(removed_value(tag.name, name, value))
    return found


def removed_value(tag: str, attribute: str, value: str) -> str:
    if attribute in ("href", "src"):
        return (f"removed <{tag}> {attribute} '{shorten(value)}' (an email can only link to "
                "http, https and mailto URLs and to #anchors)")
    return f"removed {attribute} '{shorten(value)}' from <{tag}>"


class Nesting:
    """How deep elements nest, from a stream of opening and closing tags as a browser pairs them."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.open_count: dict[str, int] = {}

    @property
    def depth(self) -> int:
        return len(self.stack)

    def open(self, name: str) -> None:
        if name in VOID:
            return
        if name in SIBLINGS and self.stack and self.stack[-1] == name:
            self.close(name)
        self.stack.append(name)
        self.open_count[name] = self.open_count.get(name, 0) + 1

    def close(self, name: str) -> None:
        if not self.open_count.get(name):
            return  # a browser ignores a closing tag with nothing to close
        index = len(self.stack) - 1
        while self.stack[index] != name:
            if self.stack[index] in SCOPE_MARKERS:
                return  # out of reach: ignored too
            index -= 1
        for top in self.stack[index:]:
            self.open_count[top] -= 1
        del self.stack[index:]


CLEAN_TAG_RE = re.compile(r"<(/?)([a-zA-Z][^\s/>]*)")


def depth(cleaned: str) -> int:
    """How deep the elements of `clean`'s output nest (it is balanced, and escapes < everywhere)."""
    nesting, deepest = Nesting(), 0
    for tag in CLEAN_TAG_RE.finditer(cleaned):
        if tag.group(1):
            nesting.close(tag.group(2).lower())
        else:
            nesting.open(tag.group(2).lower())
            deepest = max(deepest, nesting.depth)
    return deepest


# -- raw HTML in a digest's Markdown -----------------------------------------------------------

def check_blocks(tokens: list[Token], check: Checker) -> None:
    """A comment, <script>, <pre>, ... that is never closed makes the rest of the file one
    block of raw HTML: the stories after it would be hidden or shown as source."""
    for token in tokens:
        opening = BLOCK_OPENING_RE.match(token.content) if token.type == "html_block" else None
        if opening is None or not token.map:
            continue
        kind = opening.group(1).lower()
        end = f"</{kind[1:]}>" if opening.group(2) else next(e for p, e in BLOCK_ENDS if kind.startswith(p))
        if end not in token.content[opening.start(1) + 2:].lower():  # from +2: <!--> is closed
            check.error(check.line_at(token.map[0]), f"'{kind[:9]}' is never closed ('{end}' is "
                        "missing): everything after it would be raw HTML")


class Inspection:
    """One fragment, walked before it is rendered: each thing the allow-list will remove from raw
    HTML is a warning on its line; a Markdown link or image whose URL cannot work in an email,
    elements nesting too deep, or an element removed with its content that never closes (taking
    the rest of the fragment with it), are errors."""

    def __init__(self, line: int, check: Checker):
        self.line, self.check = line, check
        self.nesting = Nesting()
        self.opened_on: dict[str, int] = {}  # element removed with its content -> its line
        self.raw_text: str | None = None  # an open <script> or the like: all is text up to its end

    def run(self, tokens: list[Token]) -> bool:
        for token in tokens:
            if token.map:
                self.line = self.check.line_at(token.map[0])
            for child in (token.children or []) if token.type == "inline" else [token]:
                if not self.visit(child):
                    return False
        left_open = [self.raw_text] if self.raw_text else \
            [name for name in self.nesting.stack if name in DROPPED_WITH_CONTENT]
        if left_open:
            self.check.error(self.opened_on.get(left_open[0], self.line), f"<{left_open[0]}> is never closed: it "
                             "and everything after it would be left out of the email")
        return not left_open

    def visit(self, token: Token) -> bool:
        if token.type in ("softbreak", "hardbreak"):
            self.line += 1
        elif token.type in ("html_block", "html_inline"):
            return self.raw(token.content, inline=token.type == "html_inline")
        elif self.raw_text:
            return True  # Markdown inside <script>...</script> is script
        elif token.type == "link_open":
            href = str(token.attrGet("href") or "")
            if not url_allowed(href):
                self.check.error(self.line, f"the link '{shorten(href)}' leads nowhere in an email: "
                                 "write an http, https or mailto URL, or a #anchor")
        elif token.type == "image":
            self.image(str(token.attrGet("src") or ""), token.content)
        if token.nesting and not token.hidden:
            return self.tag(token.tag, closing=token.nesting == -1)
        return True

    def image(self, src: str, alt: str) -> None:
        """A Markdown image: one that cannot load is an error, one without alt text a warning."""
        scheme = SCHEME_RE.match(URL_NOISE_RE.sub("", src).strip(C0_AND_SPACE))
        if scheme is None or scheme.group(1).lower() not in ("http", "https"):
            self.check.error(self.line, f"the image '{shorten(src)}' cannot load in an email: its URL "
                             "must start with https:// (or http://)")
        if not alt.strip():
            self.check.warn(self.line, f"the image '{shorten(src)}' has no alt text, which readers see "
                            "when images are blocked and screen readers read out")

    def raw(self, raw: str, inline: bool) -> bool:
        line = self.line
        fine = self.raw_tags(raw)
        # an inline tag can span lines; a block's next token knows its own line
        self.line = line + raw.count("\n") if inline else line
        return fine

    def raw_tags(self, raw: str) -> bool:
        start = 0
        if self.raw_text:
            start = end_of_raw_text(self.raw_text, raw)
            if start < 0:
                return True
            self.raw_text = None
        counted_to = 0
        for tag in tags(raw[start:] if start else raw):
            self.line += raw.count("\n", counted_to, start + tag.offset)
            counted_to = start + tag.offset
            for message in removals(tag):
                self.check.warn(self.line, message)
            if not self.tag(tag.name, tag.closing):
                return False
            if tag.runs_on:
                self.raw_text = tag.name
                self.opened_on.setdefault(tag.name, self.line)
        return True

    def tag(self, name: str, closing: bool) -> bool:
        if closing:
            self.nesting.close(name)
            return True
        if name in DROPPED_WITH_CONTENT:
            self.opened_on[name] = self.line
        self.nesting.open(name)
        if self.nesting.depth > MAX_DEPTH:
            self.check.error(self.line, too_deep())
            return False
        return True


def too_deep() -> str:
    return (f"elements nest more than {MAX_DEPTH} levels deep here; email clients would "
            "cut the email off at this point")
