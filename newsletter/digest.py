"""A digest file (Markdown with YAML front matter) becomes a `Digest`.

The body is parsed once. Each section's HTML and plain text are kept with footnote references
as placeholders (`\\x02label\\x03`), so that a variant for any set of categories only has to
number the notes it keeps; see `render.py`.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token
from mdit_py_plugins.footnote import footnote_plugin

from . import plaintext
from .config import Settings
from .errors import DigestError, Problem

REF_OPEN, REF_CLOSE = "\x02", "\x03"
LINK_STYLE = "color:#0b57d0"
REF_RE = re.compile("\x02([^\x03]*)\x03")
UNDEFINED_REF_RE = re.compile(r"\[\^([^\]\s]+)\]")
CATEGORIES_COMMENT_RE = re.compile(r"^\s*<!--\s*categories\s*:(.*?)-->\s*$", re.I | re.S)
SOURCE_RE = re.compile(r"^source\s*:\s*", re.I)
ROUNDUPS_RE = re.compile(r"^round[- ]?ups?$", re.I)
PLACEHOLDER_RE = re.compile(r"\b(TK|TODO)\b")
FENCE_RE = re.compile(r"^ {0,3}(```|~~~)")
CODE_SPAN_RE = re.compile(r"(`+).+?\1")
URL_RE = re.compile(r"[a-z][a-z0-9+.-]*://[^\s)>\]]+", re.I)  # a TODO inside a URL is the URL's
FRONT_MATTER_KEYS = {"title", "subtitle", "date", "author", "categories", "tldr", "preheader",
                     "footnotes"}


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
    warnings: list[Problem] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return self.path.stem

    @property
    def sections(self) -> list[Section]:
        return [self.opening, *self.stories]


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"typographer": True}).enable(["replacements", "smartquotes"])
    md.use(footnote_plugin)
    md.core.ruler.disable("footnote_tail")  # keeps every definition in place, cited or not
    rules = md.add_render_rule
    rules("footnote_ref", lambda self, tokens, idx, options, env:
          f"{REF_OPEN}{tokens[idx].meta['label']}{REF_CLOSE}")
    rules("html_block", lambda self, tokens, idx, options, env:
          "" if tokens[idx].content.lstrip().startswith("<!--") else tokens[idx].content)
    rules("image", _render_image)
    rules("link_open", _render_link)
    rules("blockquote_open", lambda *a: '<blockquote class="pull">\n')
    return md


def _render_link(self, tokens, idx, options, env) -> str:
    # Links are the most frequent element of a digest; styling them here spares premailer
    # (which costs per styled element) most of its work.
    tokens[idx].attrSet("style", LINK_STYLE)
    return self.renderToken(tokens, idx, options, env)


def _render_image(self, tokens, idx, options, env) -> str:
    token = tokens[idx]
    alt = self.renderInlineAsText(token.children or [], options, env)
    src = _escape(token.attrGet("src") or "")
    return f'<img src="{src}" alt="{_escape(alt)}" class="img" width="592">'


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


MD = _markdown()


class _Checker:
    """Collects problems with file and line while a digest is read."""

    def __init__(self, path: Path):
        self.file = str(path)
        self.problems: list[Problem] = []

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
    check = _Checker(path)
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


def parse_digest(text: str, path: Path, settings: Settings, check: _Checker) -> Digest | None:
    text = text.replace("\r\n", "\n").lstrip("\ufeff")
    lines = text.split("\n")
    front, body_start = _split_front_matter(lines, check)
    loaded = _load_front_matter(front, check) if front is not None else None
    _check_placeholders(lines, check)
    if loaded is None:  # already reported; the rest would only add noise
        return None
    meta, key_lines = loaded

    def line_of(key: str) -> int:
        return key_lines.get(key, 1)

    for key in meta:
        if key not in FRONT_MATTER_KEYS:
            check.warn(line_of(key), f"unknown front matter key '{key}' "
                       f"(known: {', '.join(sorted(FRONT_MATTER_KEYS))})")
    title = _text_field(meta, "title", line_of, check)
    if not title:
        check.error(1, "front matter has no 'title'")
    default_categories = _categories(meta.get("categories"), line_of("categories"), settings, check)
    footnote_mode = meta.get("footnotes", "inline")
    if footnote_mode not in ("inline", "end"):
        check.error(line_of("footnotes"), f"'footnotes' must be 'inline' or 'end', got {footnote_mode!r}")
        footnote_mode = "inline"
    tldr = meta.get("tldr") or []
    if isinstance(tldr, str) or not isinstance(tldr, list) or \
            not all(isinstance(t, (str, int, float)) for t in tldr):
        check.error(line_of("tldr"), "'tldr' must be a list of short lines")
        tldr = []

    body_lines = lines[body_start:]
    env: dict[str, Any] = {}
    tokens = MD.parse("\n".join(body_lines), env)
    to_file_line = lambda body_line: body_start + body_line + 1  # noqa: E731
    _check_references(tokens, body_lines, to_file_line, check)
    main, footnotes = _take_footnotes(tokens, env, to_file_line, check)
    opening_tokens, story_chunks = _split_stories(main)
    opening = _opening(opening_tokens, [str(t) for t in tldr], line_of, env, to_file_line,
                       settings, check)
    stories = [_story(chunk, env, to_file_line, default_categories, settings, check)
               for chunk in story_chunks]
    _check_anchors(stories)

    cited = {label for s in [opening, *stories] for label in s.cited_labels}
    for label, note in footnotes.items():
        if label not in cited:
            check.warn(note.line, f"footnote [^{label}] is defined but never cited")
    if not stories:
        check.warn(body_start + 1, "the digest has no stories (a story starts with a '## ' heading)")

    return Digest(
        path=path, title=title or "", subtitle=_text_field(meta, "subtitle", line_of, check),
        date=_date(meta.get("date"), line_of("date"), check),
        author=_text_field(meta, "author", line_of, check),
        preheader=_text_field(meta, "preheader", line_of, check),
        footnote_mode=footnote_mode, opening=opening, stories=stories,
        footnotes={label: note for label, note in footnotes.items() if label in cited},
        warnings=[p for p in check.problems if p.severity == "warning"],
    )


# -- front matter -------------------------------------------------------------------------------

def _split_front_matter(lines: list[str], check: _Checker) -> tuple[str | None, int]:
    if not lines or lines[0].strip() != "---":
        check.error(1, "no front matter: the file must start with a '---' line, then YAML, then '---'")
        return None, 0
    for i in range(1, len(lines)):
        if lines[i].strip() in ("---", "..."):
            return "\n".join(lines[1:i]), i + 1
    check.error(1, "front matter is not closed by a '---' line")
    return None, 0


def _load_front_matter(front: str, check: _Checker) -> tuple[dict[str, Any], dict[str, int]] | None:
    try:
        node = yaml.compose(front, Loader=yaml.SafeLoader)
        meta = yaml.safe_load(front)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = mark.line + 2 if mark is not None else 1
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        check.error(line, f"invalid front matter: {problem}")
        return None
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        check.error(2, "front matter must be 'key: value' lines")
        return None
    key_lines = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                key_lines[k.value] = k.start_mark.line + 2
                if isinstance(v, yaml.SequenceNode):  # each item's own line: "tldr.0", ...
                    key_lines |= {f"{k.value}.{i}": item.start_mark.line + 2 for i, item in enumerate(v.value)}
    return meta, key_lines


def _text_field(meta: dict, key: str, line_of: Callable[[str], int], check: _Checker) -> str:
    value = meta.get(key)
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        check.error(line_of(key), f"'{key}' must be text")
        return ""
    return str(value).strip()


def _date(value: Any, line: int, check: _Checker) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value.date() if isinstance(value, dt.datetime) else value
    try:
        return dt.date.fromisoformat(str(value).strip())
    except ValueError:
        check.error(line, f"'date' must be a date like 2026-04-22, got {value!r}")
        return None


def _categories(value: Any, line: int, settings: Settings, check: _Checker, *,
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
            check.error(line, f"unknown category '{slug}' (known: {known})")
    return slugs


def _check_placeholders(lines: list[str], check: _Checker) -> None:
    in_fence = False
    for number, line in enumerate(lines, 1):
        if FENCE_RE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        match = PLACEHOLDER_RE.search(URL_RE.sub("", CODE_SPAN_RE.sub("", line)))
        if match:
            check.error(number, f"leftover placeholder '{match.group(1)}'")


# -- footnotes ----------------------------------------------------------------------------------

def _undefined_refs(children: list[Token], source: str) -> list[str]:
    """Labels of `[^label]` left as text: the parser found no definition for them. One the
    writer escaped (`\\[^label]`) is meant as text."""
    found = []
    for child in children:
        if child.type == "text":
            for m in UNDEFINED_REF_RE.finditer(child.content):
                if re.search(r"(?<!\\)" + re.escape(m.group(0)), source):
                    found.append(m.group(1))
    return found


def _check_references(tokens: list[Token], body_lines: list[str], to_file_line, check: _Checker) -> None:
    for token in tokens:
        if token.type != "inline" or not token.map:
            continue
        first, last = token.map
        for label in _undefined_refs(token.children or [], "\n".join(body_lines[first:last])):
            offset = next((i for i in range(first, last) if f"[^{label}]" in body_lines[i]), first)
            check.error(to_file_line(offset), f"footnote [^{label}] is never defined")


def _take_footnotes(tokens: list[Token], env, to_file_line, check: _Checker
                    ) -> tuple[list[Token], dict[str, Footnote]]:
    """Pull every footnote definition out of the token stream, wherever the writer put it."""
    main: list[Token] = []
    notes: dict[str, Footnote] = {}
    lines: dict[str, int] = {}
    label, inside, line = None, [], 0
    for token in tokens:
        if token.type == "footnote_reference_open":
            label, inside, line = token.meta["label"], [], to_file_line(token.map[0]) if token.map else 0
        elif token.type == "footnote_reference_close" and label is not None:
            if label in lines:
                check.error(line, f"footnote [^{label}] is defined twice (first on line {lines[label]})")
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


def _footnote(label: str, tokens: list[Token], env, line: int, check: _Checker) -> Footnote | None:
    first_inline = next((t for t in tokens if t.type == "inline"), None)
    children = first_inline.children if first_inline else []
    link = next((c for c in children or [] if c.type == "link_open"), None)
    if link is None or not str(link.attrGet("href") or "").strip():
        check.error(line, f"footnote [^{label}] has no source link; "
                    f"write [^{label}]: [Source title](https://...)")
        return None
    idx = children.index(link)
    close = next(i for i in range(idx, len(children)) if children[i].type == "link_close")
    title = "".join(c.content for c in children[idx + 1:close] if c.type in ("text", "code_inline"))
    quote_tokens = _between(tokens, "blockquote_open", "blockquote_close")
    if any(t.type == "footnote_ref" for t in tokens if t.type == "inline" for t in t.children or []):
        check.error(line, f"footnote [^{label}] cites a note; a note cannot cite another note")
        return None
    blocks = sum(1 for t in tokens if t.nesting == 1 and t.level == tokens[0].level)
    if blocks > 1 + bool(quote_tokens):
        check.warn(line, f"footnote [^{label}]: only its first paragraph (the source link) and its "
                   "quote are shown; the rest of the note is left out")
    quote_inlines = [t for t in quote_tokens if t.type == "inline"]
    return Footnote(
        label=label, url=str(link.attrGet("href")), title=title.strip() or str(link.attrGet("href")),
        source_text="".join(c.content for c in children if c.type in ("text", "code_inline")).strip(),
        source_html=MD.renderer.render([t for t in children if t.type != "footnote_anchor"],
                                       MD.options, env),
        quote_html="<br>".join(MD.renderer.render(t.children or [], MD.options, env)
                               for t in quote_inlines),
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


def _opening(tokens, tldr: list[str], tldr_line, env, to_file_line, settings, check) -> Section:
    categories = None
    body = []
    for token in tokens:
        found = _categories_comment(token)
        if found is not None:
            categories = _categories(found, to_file_line(token.map[0]), settings, check, comment=True)
        else:
            body.append(token)
    tldr_tokens = [MD.parseInline(item, env)[0].children or [] for item in tldr]
    for index, (item, children) in enumerate(zip(tldr, tldr_tokens)):
        for label in _undefined_refs(children, item):
            check.error(tldr_line(f"tldr.{index}"), f"footnote [^{label}] is never defined (in 'tldr')")
    return Section(
        kind="opening", line=1, categories=categories,
        tldr_html=[MD.renderer.render(c, MD.options, env) for c in tldr_tokens],
        tldr_text=[plaintext.inline(c) for c in tldr_tokens],
        body_html=MD.renderer.render(body, MD.options, env),
        body_text=plaintext.blocks(body),
    )


def _story(tokens: list[Token], env, to_file_line, default_categories, settings, check) -> Section:
    heading = tokens[1]
    line = to_file_line(tokens[0].map[0]) if tokens[0].map else 1
    title_text = plaintext.inline(heading.children or []).strip()
    is_roundups = bool(ROUNDUPS_RE.match(title_text))
    section = Section(kind="roundups" if is_roundups else "story", line=line,
                      title_html=MD.renderer.render(heading.children or [], MD.options, env),
                      title_text=title_text, anchor=_anchor(REF_RE.sub("", title_text)),
                      categories=None if is_roundups else default_categories)
    rest = tokens[3:]
    if tokens[0].tag == "h1":
        check.warn(line, "a '# ' heading starts a story here; use '## ' for stories")
    kept: list[Token] = []
    for token in rest:
        comment = _categories_comment(token)
        if comment is not None:
            section.categories = _categories(comment, to_file_line(token.map[0]), settings, check,
                                             comment=True)
        else:
            kept.append(token)
    kept = _take_source(section, kept, env)
    if is_roundups:
        section.entries = _roundup_items(kept, env, to_file_line)
        section.body_html = section.body_text = ""
        if not section.entries and not any(t.type == "inline" for t in kept):
            check.error(line, f"story '{title_text}' is empty")
        elif not section.entries:
            section.body_html = MD.renderer.render(kept, MD.options, env)
            section.body_text = plaintext.blocks(kept)
        return section
    kept = _take_tldr(section, kept, env)
    section.body_html = MD.renderer.render(kept, MD.options, env)
    section.body_text = plaintext.blocks(kept)
    if not title_text:
        check.error(line, "a story heading has no title")
    if not kept and not section.tldr_html:
        check.error(line, f"story '{title_text}' is empty")
    return section


def _categories_comment(token: Token) -> str | None:
    if token.type != "html_block":
        return None
    m = CATEGORIES_COMMENT_RE.match(token.content)
    return m.group(1) if m else None


def _take_source(section: Section | RoundupItem, tokens: list[Token], env) -> list[Token]:
    """A first paragraph starting with 'Source:' is the source line."""
    if len(tokens) >= 3 and tokens[0].type == "paragraph_open" and tokens[1].children \
            and tokens[1].children[0].type == "text" and SOURCE_RE.match(tokens[1].children[0].content):
        children = list(tokens[1].children)
        first = children[0].copy()
        first.content = SOURCE_RE.sub("", first.content)
        children[0] = first
        section.source_html = MD.renderer.render(children, MD.options, env)
        section.source_text = plaintext.inline(children)
        return tokens[3:]
    return tokens


def _take_tldr(section: Section, tokens: list[Token], env) -> list[Token]:
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
    items: list[list[Token]] = []
    for token in tokens[1:end - 1]:
        if token.type == "list_item_open" and token.level == tokens[0].level + 1:
            items.append([])
        elif items and token.type == "inline" and token.level == tokens[0].level + 3:
            if items[-1]:  # a second paragraph in one bullet continues on the same line
                items[-1].append(Token("softbreak", "br", 0))
            items[-1].extend(token.children or [])
    section.tldr_html = [MD.renderer.render(item, MD.options, env) for item in items]
    section.tldr_text = [plaintext.inline(item) for item in items]
    return tokens[end:]


def _roundup_items(tokens: list[Token], env, to_file_line) -> list[RoundupItem]:
    chunks: list[list[Token]] = []
    for token in tokens:
        if token.type == "heading_open" and token.tag == "h3":
            chunks.append([])
        if chunks:
            chunks[-1].append(token)
    items = []
    for chunk in chunks:
        heading = chunk[1]
        item = RoundupItem(
            title_html=MD.renderer.render(heading.children or [], MD.options, env),
            title_text=plaintext.inline(heading.children or []).strip(),
            source_html="", source_text="", body_html="", body_text="",
            line=to_file_line(chunk[0].map[0]) if chunk[0].map else 1)
        rest = _take_source(item, chunk[3:], env)
        item.body_html = MD.renderer.render(rest, MD.options, env)
        item.body_text = plaintext.blocks(rest)
        items.append(item)
    return items


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60] or "story"


def _check_anchors(stories: list[Section]) -> None:
    seen: dict[str, int] = {}
    for story in stories:
        base = story.anchor
        seen[base] = seen.get(base, 0) + 1
        if seen[base] > 1:
            story.anchor = f"{base}-{seen[base]}"
