"""A digest file (Markdown with YAML front matter) becomes a `Digest`.

The body is parsed once. Each section's HTML and plain text are kept with footnote references
as placeholders (`\\x02label\\x03`), so that a variant for any set of categories only has to
number the notes it keeps; see `render.py`.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Iterator

from markdown_it import MarkdownIt
from markdown_it.token import Token
from mdit_py_plugins.footnote import footnote_plugin

from . import frontmatter, plaintext, rawhtml
from .config import Settings
from .errors import DigestError, Problem, shorten
from .rawhtml import LINK_STYLE  # noqa: F401  render.py styles its references to match

REF_OPEN, REF_CLOSE = "\x02", "\x03"
REF_RE = re.compile("\x02([^\x03]*)\x03")
# `[^label]` left as text. A label stops at the next `[^`, so that every search is linear.
UNDEFINED_REF_RE = re.compile(r"\[\^((?:[^\]\s\[]|\[(?!\^))+)\]")
CATEGORIES_COMMENT_RE = re.compile(r"^\s*<!--\s*categories\s*:(.*?)-->\s*$", re.I | re.S)
SOURCE_RE = re.compile(r"^source\s*:\s*", re.I)
ROUNDUPS_RE = re.compile(r"^round[- ]?ups?$", re.I)
PLACEHOLDER_RE = re.compile(r"\b(TK|TODO)\b")
FENCE_RE = re.compile(r"^ {0,3}(```|~~~)")
BACKTICKS_RE = re.compile(r"`+")
LABEL_END_RE = re.compile(r"[\] \n]")
MAX_LABEL = 999
# A TODO inside a URL is the URL's. A scheme starts only where a word starts: tried at every
# letter of a long word, the pattern would take time quadratic in the word's length.
URL_RE = re.compile(r"(?<![a-z0-9+.-])[a-z][a-z0-9+.-]*://[^\s)>\]]+", re.I)
# fn-N and fnref-N-M are the anchors render.py gives notes and references; story anchors are
# [a-z0-9-], so the web pages' own ids (content_) never meet one.
NOTE_ANCHOR_RE = re.compile(r"fn(ref)?(-|$)")
# The lists, quotes and footnotes that markdown-it reads only down to `maxNesting` levels.
CONTAINERS = {"blockquote_open", "list_item_open", "footnote_reference_open"}
FRONT_MATTER_KEYS = {"title", "subtitle", "date", "author", "categories", "tldr", "preheader",
                     "footnotes", "status"}



@dataclass
class Footnote:
    label: str
    url: str
    title: str
    source_html: str  # the definition's first paragraph: the linked title as written
    source_text: str
    quote_html: str
    quote_text: str
    line: int

    @property
    def domain(self) -> str:
        host = re.sub(r"^[a-z][a-z0-9+.-]*://", "", self.url, flags=re.I).split("/")[0]
        return host.split("@")[-1].split(":")[0].removeprefix("www.")


@dataclass
class RoundupItem:
    title_html: str
    title_text: str
    source_html: str
    source_text: str
    body_html: str
    body_text: str
    line: int


@dataclass
class Section:
    """The opening (TL;DR and intro), a story, or the round-ups."""

    kind: str  # "opening" | "story" | "roundups"
    line: int
    title_html: str = ""
    title_text: str = ""
    anchor: str = ""
    categories: tuple[str, ...] | None = None  # None: for every reader
    source_html: str = ""
    source_text: str = ""
    tldr_html: list[str] = field(default_factory=list)
    tldr_text: list[str] = field(default_factory=list)
    body_html: str = ""
    body_text: str = ""
    entries: list[RoundupItem] = field(default_factory=list)

    @cached_property
    def cited_labels(self) -> list[str]:
        """Footnote labels in the order a reader meets them in this section."""
        # The same order as the templates show them: title, source line, TL;DR, body, round-ups.
        parts = [self.title_html, self.source_html, *self.tldr_html, self.body_html]
        for item in self.entries:
            parts += [item.title_html, item.source_html, item.body_html]
        return [m.group(1) for part in parts for m in REF_RE.finditer(part)]


@dataclass
class Digest:
    path: Path
    title: str
    subtitle: str
    date: dt.date | None
    author: str
    preheader: str
    footnote_mode: str  # "inline" | "end"
    opening: Section
    stories: list[Section]  # every '## ' section in order, the round-ups included (see .kind)
    footnotes: dict[str, Footnote]
    status: str = "draft"  # frontmatter.STATUSES: only a ready digest is sent on schedule
    warnings: list[Problem] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return self.path.stem

    @property
    def sections(self) -> list[Section]:
        return [self.opening, *self.stories]


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"typographer": True}).enable(["replacements", "smartquotes"])
    md.use(footnote_plugin, inline=False)  # ^[inline notes] have no label to cite them by
    md.core.ruler.disable("footnote_tail")  # keeps every definition in place, cited or not
    footnote_ref = next(rule.fn for rule in md.inline.ruler.__rules__ if rule.name == "footnote_ref")
    md.inline.ruler.at("footnote_ref", partial(_bounded_footnote_ref, footnote_ref))
    rules = md.add_render_rule
    rules("footnote_ref", lambda self, tokens, idx, options, env:
          f"{REF_OPEN}{tokens[idx].meta['label']}{REF_CLOSE}")
    rules("html_block", lambda self, tokens, idx, options, env:
          "" if tokens[idx].content.lstrip().startswith("<!--") else tokens[idx].content)
    rules("image", _render_image)
    rules("blockquote_open", lambda *a: '<blockquote class="pull">\n')
    return md


def _bounded_footnote_ref(footnote_ref, state, silent: bool) -> bool:
    """The plugin's rule looks for the `]` after every `[^` however far away it is: time
    quadratic in a run of `[^`. A label is never longer than a link label's 999 characters."""
    start = state.pos
    if state.src.startswith("[^", start):
        end = LABEL_END_RE.search(state.src, start + 2, min(state.posMax, start + 2 + MAX_LABEL + 1))
        if end is None or end.group() != "]":
            return False
    return footnote_ref(state, silent)


def _render_image(self, tokens, idx, options, env) -> str:
    token = tokens[idx]
    alt = self.renderInlineAsText(token.children or [], options, env)
    src = _escape(token.attrGet("src") or "")
    # The email codes the image at its column's width (render.py knows the layout, not the digest).
    return f'<img class="img" src="{src}" alt="{_escape(alt)}">'


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


MD = _markdown()


class Checker:
    """Collects problems with file and line while a digest is read."""

    def __init__(self, path: Path):
        self.file = str(path)
        self.problems: list[Problem] = []
        self.body_start = 0  # lines before the body: the front matter

    def line_at(self, body_line: int) -> int:
        """The file's line number of a line of the body (markdown-it counts from 0)."""
        return self.body_start + body_line + 1

    def error(self, line: int | None, message: str) -> None:
        self.problems.append(Problem(self.file, line, message))

    def warn(self, line: int | None, message: str) -> None:
        self.problems.append(Problem(self.file, line, message, "warning"))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


def load_digest(path: str | Path, settings: Settings) -> Digest:
    """Read and check a digest file; raise `DigestError` listing every error found."""
    path = Path(path)
    check = Checker(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DigestError([Problem(str(path), None, "file not found")]) from None
    except UnicodeDecodeError as e:
        raise DigestError([Problem(str(path), None, f"not UTF-8 text ({e.reason})")]) from None
    except OSError as e:
        raise DigestError([Problem(str(path), None, f"cannot read: {e.strerror}")]) from None
    digest = parse_digest(text, path, settings, check)
    if check.errors:
        raise DigestError(check.errors)
    return digest


def parse_digest(text: str, path: Path, settings: Settings, check: Checker) -> Digest | None:
    # markdown-it and YAML both take a lone CR for a line end: count lines the way they do.
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    front, body_start = frontmatter.split(lines, check)
    loaded = frontmatter.load(front, check) if front is not None else None
    _check_placeholders(lines, check)
    body_lines = _without_control_characters(lines[body_start:], body_start, check)
    if loaded is None:  # already reported; the rest would only add noise
        return None
    meta, key_lines = loaded

    def line_of(key: str) -> int:
        return key_lines.get(key, 1)

    for key in meta:
        if key not in FRONT_MATTER_KEYS:
            check.warn(line_of(key), f"unknown front matter key '{shorten(key)}' "
                       f"(known: {', '.join(sorted(FRONT_MATTER_KEYS))})")
    title = frontmatter.text_field(meta, "title", line_of, check)
    if not title:
        check.error(1, "front matter has no 'title'")
    frontmatter.check_subject(title, line_of("title"), check)
    default_categories = _categories(meta.get("categories"), line_of("categories"), settings, check)
    footnote_mode = meta.get("footnotes", "inline")
    if footnote_mode not in ("inline", "end"):
        check.error(line_of("footnotes"),
                    f"'footnotes' must be 'inline' or 'end', got {shorten(repr(footnote_mode))}")
        footnote_mode = "inline"
    tldr = meta.get("tldr") or []
    if isinstance(tldr, str) or not isinstance(tldr, list) or \
            not all(isinstance(t, (str, int, float)) for t in tldr):
        check.error(line_of("tldr"), "'tldr' must be a list of short lines")
        tldr = []
    tldr = [frontmatter.clean_text(str(t), "tldr", line_of(f"tldr.{i}"), check) for i, t in enumerate(tldr)]

    check.body_start = body_start
    env: dict[str, Any] = {}
    tokens = MD.parse("\n".join(body_lines), env)
    _check_nesting(tokens, check)
    rawhtml.check_blocks(tokens, check)
    _check_references(tokens, body_lines, check)
    main, footnotes = _take_footnotes(tokens, env, check)
    opening_tokens, story_chunks = _split_stories(main)
    opening = _opening(opening_tokens, tldr, line_of, env, settings, check)
    stories = [_story(chunk, env, default_categories, settings, check) for chunk in story_chunks]
    _unique_anchors(stories)

    cited = {label for s in [opening, *stories] for label in s.cited_labels}
    for label, note in footnotes.items():
        if label not in cited:
            check.warn(note.line, f"footnote [^{shorten(label)}] is defined but never cited")
    if not stories:
        check.warn(body_start + 1, "the digest has no stories (a story starts with a '## ' heading)")

    return Digest(
        path=path, title=title, subtitle=frontmatter.text_field(meta, "subtitle", line_of, check),
        date=frontmatter.date(meta.get("date"), line_of("date"), check),
        author=frontmatter.text_field(meta, "author", line_of, check),
        preheader=frontmatter.text_field(meta, "preheader", line_of, check),
        footnote_mode=footnote_mode, opening=opening, stories=stories,
        footnotes={label: note for label, note in footnotes.items() if label in cited},
        status=frontmatter.status(meta.get("status"), line_of("status"), check),
        warnings=[p for p in check.problems if p.severity == "warning"],
    )


def _categories(value: Any, line: int, settings: Settings, check: Checker, *,
                comment: bool = False) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        check.error(line, "'categories' must be a list of category slugs")
        return None
    slugs = tuple(dict.fromkeys(s.strip() for s in items if s.strip()))
    if comment and not slugs:
        check.error(line, "the categories comment names no category (it would hide the story from "
                    "every reader who chose categories)")
    for slug in slugs:
        if settings.category(slug) is None:
            known = ", ".join(settings.category_slugs) or "none are configured"
            check.error(line, f"unknown category '{shorten(slug)}' (known: {known})")
    return slugs


def _check_placeholders(lines: list[str], check: Checker) -> None:
    in_fence = False
    for number, line in enumerate(lines, 1):
        if FENCE_RE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        match = PLACEHOLDER_RE.search(URL_RE.sub("", _without_code_spans(line)))
        if match:
            check.error(number, f"leftover placeholder '{match.group(1)}'")


def _without_code_spans(line: str) -> str:
    """The line without its `code spans`: a run of backticks opens one, the next run of the same
    length closes it. Runs are paired through one index per length, so the time is linear."""
    runs = [m.span() for m in BACKTICKS_RE.finditer(line)]
    if len(runs) < 2:
        return line
    by_length: dict[int, list[int]] = {}
    for index, (start, end) in enumerate(runs):
        by_length.setdefault(end - start, []).append(index)
    next_of_length = dict.fromkeys(by_length, 0)  # only ever moves forward
    parts, kept_from, index = [], 0, 0
    while index < len(runs):
        start, end = runs[index]
        same, at = by_length[end - start], next_of_length[end - start]
        while at < len(same) and same[at] <= index:
            at += 1
        next_of_length[end - start] = at
        if at == len(same):
            index += 1  # never closed: literal backticks
            continue
        parts.append(line[kept_from:start])
        kept_from, index = runs[same[at]][1], same[at] + 1
    parts.append(line[kept_from:])
    return "".join(parts)


def _without_control_characters(lines: list[str], first: int, check: Checker) -> list[str]:
    """The body's lines, each control character in them reported and taken out."""
    cleaned = []
    for number, line in enumerate(lines, first + 1):
        found = frontmatter.CONTROL_RE.search(line)
        if found:
            check.error(number, f"the text contains the invisible control character "
                        f"{ascii(found.group())}; remove it")
            line = frontmatter.CONTROL_RE.sub("", line)
        cleaned.append(line)
    return cleaned


# -- footnotes ----------------------------------------------------------------------------------

def _written_refs(line: str) -> Iterator[str]:
    """Labels of the `[^label]` a line holds; one the writer escaped (`\\[^label]`) is text."""
    for m in UNDEFINED_REF_RE.finditer(line):
        if m.start() == 0 or line[m.start() - 1] != "\\":
            yield m.group(1)


def _undefined_refs(children: list[Token], written: dict[str, int]) -> list[str]:
    """Labels of `[^label]` left as text: the parser found no definition for them. `written`
    holds the labels written unescaped in the source."""
    return [m.group(1) for child in children if child.type == "text"
            for m in UNDEFINED_REF_RE.finditer(child.content) if m.group(1) in written]


def _check_references(tokens: list[Token], body_lines: list[str], check: Checker) -> None:
    for token in tokens:
        if token.type != "inline" or not token.map:
            continue
        first, last = token.map
        written: dict[str, int] = {}  # label -> the first line that writes it
        for number in range(first, last):
            for label in _written_refs(body_lines[number]):
                written.setdefault(label, number)
        for label in _undefined_refs(token.children or [], written):
            check.error(check.line_at(written[label]), f"footnote [^{shorten(label)}] is never defined")


def _check_nesting(tokens: list[Token], check: Checker) -> None:
    """markdown-it stops reading lists and quotes `maxNesting` levels deep, and silently drops
    what is nested deeper: refuse to get that far."""
    limit = MD.options["maxNesting"]
    for token in tokens:
        if token.type in CONTAINERS and token.level + 1 >= limit and token.map:
            check.error(check.line_at(token.map[0]),
                        f"lists and quotes nest too deep here: Markdown reads only {limit} levels "
                        "(a list takes two) and would drop the rest")
            return


def _take_footnotes(tokens: list[Token], env, check: Checker
                    ) -> tuple[list[Token], dict[str, Footnote]]:
    """Pull every footnote definition out of the token stream, wherever the writer put it."""
    main: list[Token] = []
    notes: dict[str, Footnote] = {}
    lines: dict[str, int] = {}
    label, inside, line = None, [], 0
    for token in tokens:
        if token.type == "footnote_reference_open":
            label, inside, line = token.meta["label"], [], check.line_at(token.map[0]) if token.map else 0
        elif token.type == "footnote_reference_close" and label is not None:
            if label in lines:
                check.error(line, f"footnote [^{shorten(label)}] is defined twice (first on line {lines[label]})")
            else:
                lines[label] = line
                note = _footnote(label, inside, env, line, check)
                if note:
                    notes[label] = note
            label = None
        elif label is not None:
            inside.append(token)
        else:
            main.append(token)
    return main, notes


def _footnote(label: str, tokens: list[Token], env, line: int, check: Checker) -> Footnote | None:
    first_inline = next((t for t in tokens if t.type == "inline"), None)
    children = first_inline.children if first_inline else []
    link = next((c for c in children or [] if c.type == "link_open"), None)
    if link is None or not str(link.attrGet("href") or "").strip():
        check.error(line, f"footnote [^{shorten(label)}] has no source link; "
                    f"write [^{shorten(label)}]: [Source title](https://...)")
        return None
    idx = children.index(link)
    close = next(i for i in range(idx, len(children)) if children[i].type == "link_close")
    title = "".join(c.content for c in children[idx + 1:close] if c.type in ("text", "code_inline"))
    quote_tokens = _between(tokens, "blockquote_open", "blockquote_close")
    if any(t.type == "footnote_ref" for t in tokens if t.type == "inline" for t in t.children or []):
        check.error(line, f"footnote [^{shorten(label)}] cites a note; a note cannot cite another note")
        return None
    blocks = sum(1 for t in tokens if t.nesting == 1 and t.level == tokens[0].level)
    if blocks > 1 + bool(quote_tokens):
        check.warn(line, f"footnote [^{shorten(label)}]: only its first paragraph (the source link) and its "
                   "quote are shown; the rest of the note is left out")
    quote_inlines = [t for t in quote_tokens if t.type == "inline"]
    return Footnote(
        label=label, url=str(link.attrGet("href")), title=title.strip() or str(link.attrGet("href")),
        source_text="".join(c.content for c in children if c.type in ("text", "code_inline")).strip(),
        source_html=_html([t for t in children if t.type != "footnote_anchor"], env, line, check),
        quote_html="<br>".join(_html(t.children or [], env, check.line_at(t.map[0]) if t.map else line,
                                     check) for t in quote_inlines),
        quote_text=" ".join(plaintext.inline(t.children or []) for t in quote_inlines),
        line=line,
    )


def _between(tokens: list[Token], open_type: str, close_type: str) -> list[Token]:
    start = next((i for i, t in enumerate(tokens) if t.type == open_type), None)
    if start is None:
        return []
    depth = 0
    for i in range(start, len(tokens)):
        depth += {open_type: 1, close_type: -1}.get(tokens[i].type, 0)
        if depth == 0:
            return tokens[start + 1:i]
    return tokens[start + 1:]


# -- sections -----------------------------------------------------------------------------------

def _split_stories(tokens: list[Token]) -> tuple[list[Token], list[list[Token]]]:
    opening: list[Token] = []
    stories: list[list[Token]] = []
    for token in tokens:
        if token.type == "heading_open" and token.tag in ("h1", "h2"):
            stories.append([])
        (stories[-1] if stories else opening).append(token)
    return opening, stories


def _opening(tokens, tldr: list[str], tldr_line, env, settings, check: Checker) -> Section:
    categories = None
    body = []
    for token in tokens:
        found = _categories_comment(token)
        if found is not None:
            categories = _categories(found, check.line_at(token.map[0]), settings, check, comment=True)
        else:
            body.append(token)
    tldr_tokens = [MD.parseInline(item, env)[0].children or [] for item in tldr]
    lines = [tldr_line(f"tldr.{index}") for index in range(len(tldr))]
    for item, children, line in zip(tldr, tldr_tokens, lines):
        for label in _undefined_refs(children, dict.fromkeys(_written_refs(item), 0)):
            check.error(line, f"footnote [^{shorten(label)}] is never defined (in 'tldr')")
    return Section(
        kind="opening", line=1, categories=categories,
        tldr_html=[_html(c, env, line, check) for c, line in zip(tldr_tokens, lines)],
        tldr_text=[plaintext.inline(c) for c in tldr_tokens],
        body_html=_html(body, env, check.line_at(0), check),
        body_text=plaintext.blocks(body),
    )


def _story(tokens: list[Token], env, default_categories, settings, check: Checker) -> Section:
    heading = tokens[1]
    line = check.line_at(tokens[0].map[0]) if tokens[0].map else 1
    title_text = plaintext.inline(heading.children or []).strip()
    is_roundups = bool(ROUNDUPS_RE.match(title_text))
    section = Section(kind="roundups" if is_roundups else "story", line=line,
                      title_html=_html(heading.children or [], env, line, check),
                      title_text=title_text, anchor=_anchor(REF_RE.sub("", title_text)),
                      categories=None if is_roundups else default_categories)
    rest = tokens[3:]
    if tokens[0].tag == "h1":
        check.warn(line, "a '# ' heading starts a story here; use '## ' for stories")
    kept: list[Token] = []
    for token in rest:
        comment = _categories_comment(token)
        if comment is not None:
            section.categories = _categories(comment, check.line_at(token.map[0]), settings, check,
                                             comment=True)
        else:
            kept.append(token)
    kept = _take_source(section, kept, env, check)
    if is_roundups:
        section.entries = _roundup_items(kept, env, check)
        section.body_html = section.body_text = ""
        if not section.entries and not any(t.type == "inline" for t in kept):
            check.error(line, f"story '{shorten(title_text)}' is empty")
        elif not section.entries:
            section.body_html = _html(kept, env, line, check)
            section.body_text = plaintext.blocks(kept)
        return section
    kept = _take_tldr(section, kept, env, check)
    section.body_html = _html(kept, env, line, check)
    section.body_text = plaintext.blocks(kept)
    if not title_text:
        check.error(line, "a story heading has no title")
    if not kept and not section.tldr_html:
        check.error(line, f"story '{shorten(title_text)}' is empty")
    return section


def _categories_comment(token: Token) -> str | None:
    if token.type != "html_block":
        return None
    m = CATEGORIES_COMMENT_RE.match(token.content)
    return m.group(1) if m else None


def _take_source(section: Section | RoundupItem, tokens: list[Token], env, check: Checker) -> list[Token]:
    """A first paragraph starting with 'Source:' is the source line."""
    if len(tokens) >= 3 and tokens[0].type == "paragraph_open" and tokens[1].children \
            and tokens[1].children[0].type == "text" and SOURCE_RE.match(tokens[1].children[0].content):
        children = list(tokens[1].children)
        first = children[0].copy()
        first.content = SOURCE_RE.sub("", first.content)
        children[0] = first
        section.source_html = _html(children, env, check.line_at(tokens[1].map[0]), check)
        section.source_text = plaintext.inline(children)
        return tokens[3:]
    return tokens


def _take_tldr(section: Section, tokens: list[Token], env, check: Checker) -> list[Token]:
    """A bullet list right at the top of a story is its TL;DR."""
    if not tokens or tokens[0].type != "bullet_list_open":
        return tokens
    depth, end = 0, len(tokens)
    for i, token in enumerate(tokens):
        depth += token.nesting if token.type.endswith("_list_open") or \
            token.type.endswith("_list_close") else 0
        if depth == 0:
            end = i + 1
            break
    items: list[tuple[int, list[Token]]] = []  # (line, inline tokens)
    for token in tokens[1:end - 1]:
        if token.type == "list_item_open" and token.level == tokens[0].level + 1:
            items.append((check.line_at(token.map[0]), []))
        elif items and token.type == "inline" and token.level == tokens[0].level + 3:
            if items[-1][1]:  # a second paragraph in one bullet continues on the same line
                items[-1][1].append(Token("softbreak", "br", 0))
            items[-1][1].extend(token.children or [])
    section.tldr_html = [_html(item, env, line, check) for line, item in items]
    section.tldr_text = [plaintext.inline(item) for _, item in items]
    return tokens[end:]


def _roundup_items(tokens: list[Token], env, check: Checker) -> list[RoundupItem]:
    chunks: list[list[Token]] = []
    for token in tokens:
        if token.type == "heading_open" and token.tag == "h3":
            chunks.append([])
        if chunks:
            chunks[-1].append(token)
    items = []
    for chunk in chunks:
        heading = chunk[1]
        line = check.line_at(chunk[0].map[0]) if chunk[0].map else 1
        item = RoundupItem(
            title_html=_html(heading.children or [], env, line, check),
            title_text=plaintext.inline(heading.children or []).strip(),
            source_html="", source_text="", body_html="", body_text="", line=line)
        rest = _take_source(item, chunk[3:], env, check)
        item.body_html = _html(rest, env, line, check)
        item.body_text = plaintext.blocks(rest)
        items.append(item)
    return items


# -- raw HTML and nesting -------------------------------------------------------------------------

def _html(tokens: list[Token], env, line: int, check: Checker) -> str:
    """Tokens (blocks, or one line's inline tokens starting on `line`) as HTML fit for email:
    raw HTML through the allow-list, what it removes reported, nesting kept shallow enough that
    no parser on the way cuts the email short."""
    if not rawhtml.Inspection(line, check).run(tokens):
        return ""  # an error; and too deep for the sanitizer, whose time grows with depth squared
    cleaned = rawhtml.clean(MD.renderer.render(tokens, MD.options, env))
    # What browsers build can nest deeper than the tags counted (tables get rows and bodies).
    if rawhtml.depth(cleaned) > rawhtml.MAX_DEPTH:
        check.error(line, rawhtml.too_deep())
        return ""
    return cleaned


# -- anchors -------------------------------------------------------------------------------------

def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60] or "story"


def _unique_anchors(stories: list[Section]) -> None:
    """Give every story an anchor no other story and no note or reference has."""
    taken: set[str] = set()
    last_suffix: dict[str, int] = {}
    for story in stories:
        base = story.anchor
        if NOTE_ANCHOR_RE.match(base):  # also keeps base-2, base-3 clear of fn-2, fn-3
            base = f"story-{base}"
        anchor, suffix = base, last_suffix.get(base, 1)
        while anchor in taken:
            suffix += 1
            anchor = f"{base}-{suffix}"
        last_suffix[base] = suffix
        taken.add(anchor)
        story.anchor = anchor
