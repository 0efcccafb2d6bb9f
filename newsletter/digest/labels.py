"""A story's source line and TL;DR label, as writers coming from Substack, Ghost or a blog write
them: `*Source: ...*`, `_Source: ..._`, `**Source:** ...`; `**TL;DR**`, `TL;DR:` or `### TL;DR`
before the bullets. Each is read as the plain form, and one that is in no place where it counts
is a warning: shown as body text, it would silently cost the story its source line or TL;DR box."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from markdown_it.token import Token

if TYPE_CHECKING:
    from .checks import Checker

SOURCE_RE = re.compile(r"^source\s*:\s*", re.I)
TLDR_LABEL_RE = re.compile(r"^\s*tl\s*;?\s*dr\s*:?\s*$", re.I)
EMPHASIS = {"em_open": "em_close", "strong_open": "strong_close"}
LABEL_BLOCKS = {"paragraph_open", "heading_open"}


def source_children(children: list[Token]) -> list[Token] | None:
    """A paragraph's inline tokens without the 'Source:' label and the emphasis around it, so
    that every spelling renders as the plain one; None when the paragraph is no source line."""
    kept = [c for c in children if c.type != "text" or c.content]
    while kept and kept[0].type in EMPHASIS:  # unwrap *...*, **...**, ***...***
        close = _matching_close(kept, 0)
        if close is None:
            return None
        kept = kept[1:close] + kept[close + 1:]
    while len(kept) > 1 and kept[0].type == kept[1].type == "text":  # **Source:** x, *Source*: x
        merged = kept[0].copy()
        merged.content += kept[1].content
        kept[:2] = [merged]
    if not kept or kept[0].type != "text" or not SOURCE_RE.match(kept[0].content):
        return None
    first = kept[0].copy()
    first.content = SOURCE_RE.sub("", first.content)
    return ([first] if first.content else []) + kept[1:]


def _matching_close(children: list[Token], start: int) -> int | None:
    depth = 0
    for i in range(start, len(children)):
        if children[i].type == children[start].type:
            depth += 1
        elif children[i].type == EMPHASIS[children[start].type]:
            depth -= 1
            if depth == 0:
                return i
    return None


def is_tldr_label(tokens: list[Token], index: int) -> bool:
    """Whether tokens[index] opens a paragraph or sub-head that says only 'TL;DR'."""
    if index + 1 >= len(tokens) or tokens[index].type not in LABEL_BLOCKS or tokens[index].tag in ("h1", "h2"):
        return False
    text = "".join(c.content for c in tokens[index + 1].children or [] if c.type == "text")
    return bool(TLDR_LABEL_RE.match(text))


def warn_misplaced(tokens: list[Token], check: Checker, *, tldr_here: str) -> None:
    """Each top-level paragraph left in a body that looks like a source line or a TL;DR label."""
    for index, token in enumerate(tokens):
        if token.level != 0 or not token.map or token.type not in LABEL_BLOCKS:
            continue
        line = check.line_at(token.map[0])
        if is_tldr_label(tokens, index):
            check.warn(line, f"this 'TL;DR' label is shown as body text: {tldr_here}")
        elif token.type == "paragraph_open" and source_children(tokens[index + 1].children or []) is not None:
            check.warn(line, "this looks like a source line but is shown as body text: a source line is the "
                       "first paragraph under a story's '## ' or a round-up's '### ' heading")
