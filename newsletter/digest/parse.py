"""A digest file becomes a `Digest`: front matter, opening, stories, round-ups and notes.

The body is parsed once; the structure is read from markdown-it's tokens, and every check on the
way reports to one `Checker`, so that all the problems of a file are reported together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markdown_it.token import Token

from .. import frontmatter, plaintext, rawhtml
from ..config import Settings
from ..errors import DigestError, Problem, shorten
from .checks import (Checker, check_nesting, check_placeholders, check_references, defined_labels,
                     read_categories, undefined, undefined_refs, without_control_characters,
                     written_refs)
from .footnotes import take_footnotes
from .labels import is_tldr_label, source_children, warn_misplaced
from .markdown import MD, to_html
from .model import REF_RE, Digest, RoundupItem, Section

CATEGORIES_COMMENT_RE = re.compile(r"^\s*<!--\s*categories\s*:(.*?)-->\s*$", re.I | re.S)
ROUNDUPS_RE = re.compile(r"^round[- ]?ups?$", re.I)
# fn-N and fnref-N-M are the anchors render.py gives notes and references; story anchors are
# [a-z0-9-], so the web pages' own ids (content_) never meet one.
NOTE_ANCHOR_RE = re.compile(r"fn(ref)?(-|$)")
TLDR_PLACE = "a story's TL;DR is the bullet list right under its heading and source line"
FRONT_MATTER_KEYS = {"title", "subtitle", "date", "author", "categories", "tldr", "preheader",
                     "footnotes", "status", "subjects", "preheaders"}


@dataclass
class Source:
    """A digest file's lines with its front matter read, once: all that a look at `status` and
    `date` needs (`due.py`), and where a full load goes on from."""

    check: Checker  # holds what reading the front matter found
    lines: list[str]
    body_start: int
    front: tuple[dict[str, Any], dict[str, int]] | None  # values, line of each key; None: reported


def read_source(path: str | Path) -> Source:
    """Read a digest file and its front matter; raise `DigestError` if the file cannot be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DigestError([Problem(str(path), None, "file not found")]) from None
    except UnicodeDecodeError as e:
        raise DigestError([Problem(str(path), None, f"not UTF-8 text ({e.reason})")]) from None
    except OSError as e:
        raise DigestError([Problem(str(path), None, f"cannot read: {e.strerror}")]) from None
    return split_source(text, Checker(path))


def split_source(text: str, check: Checker) -> Source:
    """The text as lines, its front matter split off and read; what is wrong goes to `check`."""
    # markdown-it and YAML both take a lone CR for a line end: count lines the way they do.
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    front, body_start = frontmatter.split(lines, check)
    loaded = frontmatter.load(front, check) if front is not None else None
    return Source(check, lines, body_start, loaded)


def load_digest(path: str | Path, settings: Settings, source: Source | None = None) -> Digest:
    """Read and check a digest file (or go on from its `source`, already read); raise
    `DigestError` listing every error found."""
    source = source or read_source(path)
    digest = _digest(source, Path(path), settings)
    if source.check.errors:
        raise DigestError(source.check.errors)
    return digest


def parse_digest(text: str, path: Path, settings: Settings, check: Checker) -> Digest | None:
    """The digest in `text`, its problems reported to `check`; None if the front matter is broken."""
    return _digest(split_source(text, check), path, settings)


def _digest(source: Source, path: Path, settings: Settings) -> Digest | None:
    check, lines, body_start = source.check, source.lines, source.body_start
    check_placeholders(lines, check)
    body_lines = without_control_characters(lines[body_start:], body_start, check)
    if source.front is None:  # already reported; the rest would only add noise
        return None
    meta, key_lines = source.front

    def line_of(key: str) -> int:
        return key_lines.get(key, 1)

    for key in meta:
        if key not in FRONT_MATTER_KEYS:
            check.warn(line_of(key), f"unknown front matter key '{shorten(key)}' "
                       f"(known: {', '.join(sorted(FRONT_MATTER_KEYS))})")
    title = frontmatter.text_field(meta, "title", line_of, check)
    if not title and isinstance(meta.get("title"), (str, type(None))):  # else: not text, reported
        check.error(line_of("title"), "front matter has no 'title'")
    frontmatter.check_subject(title, line_of("title"), check)
    default_categories = read_categories(meta.get("categories"), line_of("categories"), settings, check)
    footnote_mode = "inline" if meta.get("footnotes") is None else meta["footnotes"]
    if footnote_mode not in ("inline", "end"):
        check.error(line_of("footnotes"),
                    f"'footnotes' must be 'inline' or 'end', got {shorten(repr(footnote_mode))}")
        footnote_mode = "inline"
    tldr = _tldr_lines(meta.get("tldr"), line_of, settings, check)
    per_category = {key: _per_category(meta.get(key), key, line_of, settings, check)
                    for key in ("subjects", "preheaders")}

    check.body_start = body_start
    env: dict[str, Any] = {}
    tokens = MD.parse("\n".join(body_lines), env)
    check_nesting(tokens, check)
    rawhtml.check_blocks(tokens, check)
    check_references(tokens, body_lines, env, check)
    main, footnotes = take_footnotes(tokens, env, check)
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
    _warn_unused_categories(tldr, per_category, stories, check)

    return Digest(
        path=path, title=title, subtitle=frontmatter.text_field(meta, "subtitle", line_of, check),
        date=frontmatter.date(meta.get("date"), line_of("date"), check),
        author=frontmatter.text_field(meta, "author", line_of, check),
        preheader=frontmatter.text_field(meta, "preheader", line_of, check),
        footnote_mode=footnote_mode, opening=opening, stories=stories,
        footnotes={label: note for label, note in footnotes.items() if label in cited},
        status=frontmatter.status(meta.get("status"), line_of("status"), check),
        warnings=[p for p in check.problems if p.severity == "warning"],
        subjects=[(cats, text) for cats, text, _ in per_category["subjects"]],
        preheaders=[(cats, text) for cats, text, _ in per_category["preheaders"]],
        tldr_line=line_of("tldr"),
    )


def _tldr_lines(value: Any, line_of, settings: Settings, check: Checker) -> list[tuple[str, Any, int]]:
    """The front matter's TL;DR: (text, its own categories or None, line) for each line. A line
    is a string, or `text:` with `categories:` for a line only readers of those get."""
    if value is None:
        return []
    if not isinstance(value, list):
        check.error(line_of("tldr"), "'tldr' must be a list of short lines")
        return []
    lines = []
    for index, item in enumerate(value):
        line = line_of(f"tldr.{index}")
        categories = None
        if isinstance(item, dict):
            extra = sorted(set(map(str, item)) - {"text", "categories"})
            if extra or not isinstance(item.get("text"), str):
                check.error(line, "a 'tldr' line is text, or 'text:' with 'categories:' for a line only "
                                  "readers of those categories get" + (f" (unknown: {shorten(extra[0])})" if extra else ""))
                continue
            categories = read_categories(item.get("categories"), line, settings, check)
            if not categories:
                check.error(line, "a 'tldr' line with 'text:' needs 'categories:' (a plain line follows "
                                  "the stories whose notes it cites)")
                continue
            item = item["text"]
        elif not isinstance(item, (str, int, float)):
            check.error(line, "'tldr' must be a list of short lines")
            continue
        lines.append((frontmatter.clean_text(str(item), "tldr", line, check), categories, line))
    return lines


def _warn_unused_categories(tldr, per_category, stories: list[Section], check: Checker) -> None:
    """A TL;DR line, subject or preheader for categories no story of this issue carries reaches
    no reader: a reader's variant is made of the categories of the stories they get."""
    carried = {c for s in stories if s.kind == "story" for c in (s.categories or ())}
    for _text, own, line in tldr:
        if own and not carried & set(own):
            check.warn(line, f"no reader sees this 'tldr' line: no story is in {', '.join(own)}")
    for key, entries in per_category.items():
        for cats, _text, line in entries:
            if not cats <= carried:
                missing = ", ".join(sorted(cats - carried))
                check.warn(line, f"no reader gets this entry of '{key}': no story is in {missing}")


def _per_category(value: Any, key: str, line_of, settings: Settings, check: Checker
                  ) -> list[tuple[frozenset[str], str, int]]:
    """`subjects:` or `preheaders:`: category (or "a, b" for readers of exactly those) -> text."""
    if value is None:
        return []
    if not isinstance(value, dict):
        check.error(line_of(key), f"'{key}' must be 'category: text' lines, like 'ai-tech: \"...\"'")
        return []
    entries = []
    for name, text in value.items():
        line = line_of(f"{key}.{name}")
        slugs = read_categories(str(name).replace("+", ","), line, settings, check)
        if not isinstance(text, str) or not text.strip():
            check.error(line, f"'{key}' of {shorten(str(name))} must be text")
            continue
        if slugs:
            text = frontmatter.clean_text(text.strip(), key, line, check)
            if key == "subjects":
                frontmatter.check_subject(text, line, check, key=key)
            entries.append((frozenset(slugs), text, line))
    return entries


# -- sections -----------------------------------------------------------------------------------

def _split_stories(tokens: list[Token]) -> tuple[list[Token], list[list[Token]]]:
    opening: list[Token] = []
    stories: list[list[Token]] = []
    for token in tokens:
        if token.type == "heading_open" and token.tag in ("h1", "h2"):
            stories.append([])
        (stories[-1] if stories else opening).append(token)
    return opening, stories


def _opening(tokens, tldr: list[tuple[str, Any, int]], tldr_line, env, settings, check: Checker) -> Section:
    categories = None
    body = []
    for token in tokens:
        found = _categories_comment(token)
        if found is not None:
            categories = read_categories(found, check.line_at(token.map[0]), settings, check,
                                         comment=True)
        else:
            body.append(token)
    warn_misplaced(body, check, tldr_here="the TL;DR box at the top is the 'tldr' list of the front matter")
    tldr_tokens = [MD.parseInline(item, env)[0].children or [] for item, _, _ in tldr]
    lines = [line for _, _, line in tldr]
    for (item, _, line), children in zip(tldr, tldr_tokens):
        for label in undefined_refs(children, dict.fromkeys(written_refs(item), 0)):
            check.error(line, f"{undefined(label, defined_labels(env), check)} (in 'tldr')")
    return Section(
        kind="opening", line=1, categories=categories,
        tldr_html=[to_html(c, env, line, check) for c, line in zip(tldr_tokens, lines)],
        tldr_text=[plaintext.inline(c) for c in tldr_tokens],
        tldr_categories=[categories for _, categories, _ in tldr],
        body_html=to_html(body, env, check.line_at(0), check),
        body_text=plaintext.blocks(body),
    )


def _story(tokens: list[Token], env, default_categories, settings, check: Checker) -> Section:
    heading = tokens[1]
    line = check.line_at(tokens[0].map[0]) if tokens[0].map else 1
    title_text = plaintext.inline(heading.children or []).strip()
    is_roundups = bool(ROUNDUPS_RE.match(title_text))
    section = Section(kind="roundups" if is_roundups else "story", line=line,
                      title_html=to_html(heading.children or [], env, line, check),
                      title_text=title_text, anchor=_anchor(REF_RE.sub("", title_text)),
                      categories=None if is_roundups else default_categories)
    rest = tokens[3:]
    if tokens[0].tag == "h1":
        check.warn(line, "a '# ' heading starts a story here; use '## ' for stories")
    kept: list[Token] = []
    for token in rest:
        comment = _categories_comment(token)
        if comment is not None:
            section.categories = read_categories(comment, check.line_at(token.map[0]), settings,
                                                 check, comment=True)
        else:
            kept.append(token)
    kept = _take_source(section, kept, env, check)
    if is_roundups:
        section.entries = _roundup_items(kept, env, check)
        section.body_html = section.body_text = ""
        if not section.entries and not any(t.type == "inline" for t in kept):
            check.error(line, f"story '{shorten(title_text)}' is empty")
        elif not section.entries:
            section.body_html = to_html(kept, env, line, check)
            section.body_text = plaintext.blocks(kept)
        return section
    kept = _take_tldr(section, kept, env, check)
    warn_misplaced(kept, check, tldr_here=TLDR_PLACE)
    section.body_html = to_html(kept, env, line, check)
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
    """A first paragraph starting with 'Source:', emphasised or not, is the source line."""
    children = source_children(tokens[1].children or []) \
        if len(tokens) >= 3 and tokens[0].type == "paragraph_open" else None
    if children is not None:
        section.source_html = to_html(children, env, check.line_at(tokens[1].map[0]), check)
        section.source_text = plaintext.inline(children)
        return tokens[3:]
    return tokens


def _take_tldr(section: Section, tokens: list[Token], env, check: Checker) -> list[Token]:
    """A bullet list right at the top of a story is its TL;DR; a 'TL;DR' label may come first."""
    if is_tldr_label(tokens, 0) and len(tokens) > 3 and tokens[3].type == "bullet_list_open":
        tokens = tokens[3:]
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
    section.tldr_html = [to_html(item, env, line, check) for line, item in items]
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
            title_html=to_html(heading.children or [], env, line, check),
            title_text=plaintext.inline(heading.children or []).strip(),
            source_html="", source_text="", body_html="", body_text="", line=line)
        rest = _take_source(item, chunk[3:], env, check)
        warn_misplaced(rest, check, tldr_here=TLDR_PLACE)
        item.body_html = to_html(rest, env, line, check)
        item.body_text = plaintext.blocks(rest)
        items.append(item)
    return items



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
