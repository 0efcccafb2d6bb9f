"""The checks on a digest's body: each problem found with its file and line, all of them reported
together (`Checker`), never a traceback."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Iterator

from markdown_it.token import Token

from .. import frontmatter
from ..config import Settings
from ..errors import Problem, shorten
from .markdown import MD

# `[^label]` left as text. A label stops at the next `[^`, so that every search is linear.
UNDEFINED_REF_RE = re.compile(r"\[\^((?:[^\]\s\[]|\[(?!\^))+)\]")
# A placeholder is a word of its own: `TK`, `TK.`, `(TK)`; never part of a name such as
# TK-Instruct, TKO, sTK or TK.js.
PLACEHOLDER_RE = re.compile(r"(?<![\w-])(TK|TODO)(?![\w-]|\.\w)")
FENCE_RE = re.compile(r"^ {0,3}(```|~~~)")
BACKTICKS_RE = re.compile(r"`+")
# A TODO inside a URL is the URL's. A scheme starts only where a word starts: tried at every
# letter of a long word, the pattern would take time quadratic in the word's length.
URL_RE = re.compile(r"(?<![a-z0-9+.-])[a-z][a-z0-9+.-]*://[^\s)>\]]+", re.I)
MAX_SUGGESTIONS = 20
# The lists, quotes and footnotes that markdown-it reads only down to `maxNesting` levels.
CONTAINERS = {"blockquote_open", "list_item_open", "footnote_reference_open"}


class Checker:
    """Collects problems with file and line while a digest is read."""

    def __init__(self, path: Path):
        self.file = str(path)
        self.problems: list[Problem] = []
        self.body_start = 0  # lines before the body: the front matter
        self.suggestions = 0  # "did you mean [^label]?" offered so far

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


def read_categories(value: Any, line: int, settings: Settings, check: Checker, *,
                    comment: bool = False) -> tuple[str, ...] | None:
    """Category slugs from the front matter or a story's comment, each known to the settings."""
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


def check_placeholders(lines: list[str], check: Checker) -> None:
    in_fence = False
    for number, line in enumerate(lines, 1):
        if FENCE_RE.match(line):
            in_fence = not in_fence
            continue
        if in_fence or not _may_hold_placeholder(line):
            continue
        match = PLACEHOLDER_RE.search(URL_RE.sub("", _without_code_spans(line)))
        if match:
            check.error(number, f"leftover placeholder '{match.group(1)}'")


def _may_hold_placeholder(line: str) -> bool:
    """False only where the search below cannot match: every placeholder has a "T", and a line
    with no code span and no URL is searched as it is. Most lines are prose: one pass each."""
    if "T" not in line:
        return False
    return "TK" in line or "TODO" in line or "`" in line or "://" in line


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


def without_control_characters(lines: list[str], first: int, check: Checker) -> list[str]:
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


# -- footnote references ----------------------------------------------------------------------

def written_refs(line: str) -> Iterator[str]:
    """Labels of the `[^label]` a line holds; one the writer escaped (`\\[^label]`) is text."""
    for m in UNDEFINED_REF_RE.finditer(line):
        if m.start() == 0 or line[m.start() - 1] != "\\":
            yield m.group(1)


def undefined_refs(children: list[Token], written: dict[str, int]) -> list[str]:
    """Labels of `[^label]` left as text: the parser found no definition for them. `written`
    holds the labels written unescaped in the source."""
    return [m.group(1) for child in children if child.type == "text"
            for m in UNDEFINED_REF_RE.finditer(child.content) if m.group(1) in written]


def check_references(tokens: list[Token], body_lines: list[str], env, check: Checker) -> None:
    """Every `[^label]` cites a note that is defined."""
    defined = defined_labels(env)
    for token in tokens:
        if token.type != "inline" or not token.map:
            continue
        first, last = token.map
        written: dict[str, int] = {}  # label -> the first line that writes it
        for number in range(first, last):
            for label in written_refs(body_lines[number]):
                written.setdefault(label, number)
        for label in undefined_refs(token.children or [], written):
            check.error(check.line_at(written[label]), undefined(label, defined, check))


def defined_labels(env) -> list[str]:
    """The labels of the notes the body defines, as markdown-it found them."""
    return [key[1:] for key in env.get("footnotes", {}).get("refs", {})]


def undefined(label: str, defined: list[str], check: Checker) -> str:
    """The message for a reference to no note, with the closest label defined: a typo, mostly."""
    message = f"footnote [^{shorten(label)}] is never defined"
    check.suggestions += 1
    if check.suggestions > MAX_SUGGESTIONS:  # difflib compares with every label: bounded work
        return message
    close = difflib.get_close_matches(label, defined, n=1, cutoff=0.6)
    return f"{message}; did you mean [^{shorten(close[0])}]?" if close else message


def check_nesting(tokens: list[Token], check: Checker) -> None:
    """markdown-it stops reading lists and quotes `maxNesting` levels deep, and silently drops
    what is nested deeper: refuse to get that far."""
    limit = MD.options["maxNesting"]
    for token in tokens:
        if token.type in CONTAINERS and token.level + 1 >= limit and token.map:
            check.error(check.line_at(token.map[0]),
                        f"lists and quotes nest too deep here: Markdown reads only {limit} levels "
                        "(a list takes two) and would drop the rest")
            return
